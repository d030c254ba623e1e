"""The device head's adaptation losses and their gradients, for checks against torch autograd.

Each gradient here is computed by the same runtime functions that the adaptation steps call
(forward, backward, the continual gathering and the episodic view choice), at a head's current
weights, into buffers of its own: what a step would descend, without taking it.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from rada_export.runtimes import head_math
from rada_export.runtimes.continual import PendingFrames, gather, pending_gradient
from rada_export.runtimes.episodic import kept_views, marginal_entropy_gradient
from rada_export.runtimes.head import Head
from rada_export.runtimes.head_params import ParamViews, flatten_params, param_views, unflatten_params
from rada_export.runtimes.losses import entropy, entropy_and_grad, marginal_entropy_and_grad


def _rows(head: Head, features: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(features, dtype=np.float32).reshape(-1, head.embed_dim)


def _gradient_buffer(head: Head) -> tuple[np.ndarray, ParamViews]:
    grad = np.zeros(head.spec.size, dtype=np.float32)
    return grad, param_views(grad, head.embed_dim)


def _deployed(head: Head) -> np.ndarray:
    return flatten_params(head.weights(deployed=True), head.embed_dim)


def vjp_gradients(head: Head, features: np.ndarray, d_logits: np.ndarray,
                  d_mask: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
    """Vector-Jacobian product: the gradient of sum(d_logits * logits) + sum(d_mask * mask)."""
    snap, f = head.snapshot(), _rows(head, features)
    _, _, cache = head_math.forward(snap.views, head.spec, f, snap.text_features, snap.text_queries, True)
    d_logits = np.ascontiguousarray(d_logits, dtype=np.float32).reshape(f.shape[0], head.num_classes)
    if d_mask is not None:
        d_mask = np.ascontiguousarray(d_mask, dtype=np.float32).reshape(f.shape[0], head.num_classes, head.embed_dim)
    grad, g = _gradient_buffer(head)
    head_math.backward(snap.views, head.spec, cache, snap.text_features, d_logits, d_mask, g)
    return unflatten_params(grad, head.embed_dim)


def _kept(head: Head, views: np.ndarray) -> Optional[np.ndarray]:
    snap = head.snapshot()
    return kept_views(snap.views, head.spec, views, snap.text_features, snap.text_queries,
                      head.tta.kept_views(views.shape[0]))


def episodic_loss(head: Head, view_features: np.ndarray) -> float:
    """TPT's objective at the current weights: entropy of the kept views' mean softmax."""
    views = _rows(head, view_features)
    order = _kept(head, views)
    if order is None:
        return math.nan
    snap = head.snapshot()
    logits = head_math.chunked_logits(snap.views, head.spec, views[order], snap.text_features, snap.text_queries)
    return marginal_entropy_and_grad(logits)[0]


def episodic_gradients(head: Head, view_features: np.ndarray) -> dict[str, np.ndarray]:
    """The gradient of ``episodic_loss``: what the first episodic step descends."""
    views = _rows(head, view_features)
    order = _kept(head, views)
    assert order is not None, "the views give non-finite logits"
    snap = head.snapshot()
    grad, g = _gradient_buffer(head)
    marginal_entropy_gradient(snap.views, head.spec, views[order], snap.text_features, snap.text_queries, g)
    return unflatten_params(grad, head.embed_dim)


def continual_loss(head: Head, features: np.ndarray) -> float:
    """The continual objective of one step on these frames at the current weights, in float64.

    Mean over the confident frames of ``exp(limit - H) * H`` (weights held constant), plus
    ``mask_anchor * mean((M - 1)^2)`` over them, plus ``anchor / 2 * ||theta - theta_0||^2``.
    """
    snap, f, cfg = head.snapshot(), _rows(head, features), head.tta
    logits, mask, _ = head_math.forward(snap.views, head.spec, f, snap.text_features, snap.text_queries, False)
    ent = entropy(logits)
    limit = cfg.entropy_limit(head.num_classes)
    confident = np.isfinite(ent) & (ent < limit)
    loss = 0.0
    if confident.any():
        weight = np.exp(limit - ent[confident].astype(np.float64))
        loss += float((weight * ent[confident]).mean())
        if cfg.mask_anchor:
            loss += cfg.mask_anchor * float(np.square(mask[confident].astype(np.float64) - 1.0).mean())
    if cfg.anchor:
        drift = (snap.params - _deployed(head)).astype(np.float64)
        loss += 0.5 * cfg.anchor * float(drift @ drift)
    return loss


def continual_gradients(head: Head, features: np.ndarray) -> dict[str, np.ndarray]:
    """The gradient of ``continual_loss`` on these frames: what one continual step descends."""
    snap, f, cfg = head.snapshot(), _rows(head, features), head.tta
    logits, _, cache = head_math.forward(snap.views, head.spec, f, snap.text_features, snap.text_queries, True)
    ent, d_ent = entropy_and_grad(logits)
    limit = cfg.entropy_limit(head.num_classes)
    confident = np.isfinite(ent) & (ent < limit)
    grad, g = _gradient_buffer(head)
    if confident.any():
        pending = PendingFrames()
        gather(pending, f, cache, ent, d_ent, np.flatnonzero(confident), limit)
        pending_gradient(snap.views, head.spec, snap.text_features, pending, cfg.mask_anchor, g)
    if cfg.anchor:
        grad += cfg.anchor * (snap.params - _deployed(head))
    return unflatten_params(grad, head.embed_dim)
