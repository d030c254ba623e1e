"""The adaptation losses of the device head: each value, and its gradient w.r.t. the logits."""

from __future__ import annotations

import math

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    z -= np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return z


def entropy(logits: np.ndarray) -> np.ndarray:
    """Prediction entropy (nats) of each row of B x K logits."""
    return entropy_and_grad(logits)[0]


def entropy_and_grad(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row entropy H (B) and dH_b/dlogits_b (B x K)."""
    logp = log_softmax(logits)
    p = np.exp(logp)
    ent = -(p * logp).sum(axis=-1)
    grad = logp + ent[:, None]
    grad *= -p
    return ent, grad


def marginal_entropy_and_grad(logits: np.ndarray) -> tuple[float, np.ndarray]:
    """TPT's loss: entropy of the rows' averaged softmax, and its gradient w.r.t. each row."""
    n = logits.shape[0]
    logp = log_softmax(logits)
    p = np.exp(logp)
    mean_p = p.mean(axis=0)
    # log of the mean through logsumexp, as TPT does, so that tiny probabilities stay finite
    peak = logp.max(axis=0)
    log_mean = peak + np.log(np.exp(logp - peak).sum(axis=0)) - math.log(n)
    loss = float(-(mean_p * log_mean).sum())
    grad = (p @ log_mean)[:, None] - log_mean[None, :]
    grad *= p
    grad *= 1.0 / n
    return loss, grad
