"""AdamW over one flat float32 parameter vector, as torch.optim.AdamW computes it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

# Elements per block: five float32 blocks (params, grad, two moments, scratch) fit in L2.
_BLOCK = 1 << 16


@dataclass
class AdamState:
    """AdamW moments over the flat parameter vector, and the step count for bias correction."""

    exp_avg: np.ndarray
    exp_avg_sq: np.ndarray
    step: int = 0

    @classmethod
    def zeros(cls, size: int) -> "AdamState":
        return cls(np.zeros(size, dtype=np.float32), np.zeros(size, dtype=np.float32), 0)

    def clear(self) -> None:
        self.exp_avg.fill(0.0)
        self.exp_avg_sq.fill(0.0)
        self.step = 0


def adamw_step(
    params: np.ndarray,
    grad: np.ndarray,
    state: AdamState,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
    scratch: np.ndarray,
    anchor: float = 0.0,
    restore: float = 0.0,
    reference: Optional[np.ndarray] = None,
    out: Optional[np.ndarray] = None,
) -> None:
    """One AdamW step in place (decoupled decay, bias-corrected).

    With ``out``, the new weights go there and ``params`` is only read (copy-on-write without a
    separate whole-vector copy: each block is copied while it is in cache).

    ``anchor`` adds ``anchor * (params - reference)`` to the gradient first (the gradient of
    ``anchor / 2 * ||params - reference||^2``); ``restore`` moves the params that fraction of the
    way back to ``reference`` before the step (decoupled, like the weight decay, but toward the
    reference rather than zero). The vectors are walked in blocks that fit in cache: a
    whole-vector pass per operation is bound by memory bandwidth, several times slower.
    """
    beta1, beta2 = betas
    state.step += 1
    decay = 1.0 - lr * weight_decay
    step_size = lr / (1.0 - beta1**state.step)
    root_correction = 1.0 / math.sqrt(1.0 - beta2**state.step)
    for start in range(0, params.size, _BLOCK):
        block = slice(start, start + _BLOCK)
        p, g, m, v, tmp = params[block], grad[block], state.exp_avg[block], state.exp_avg_sq[block], scratch[block]
        if out is not None:
            np.copyto(out[block], p)
            p = out[block]
        if anchor:
            np.subtract(p, reference[block], out=tmp)
            tmp *= anchor
            g += tmp
        if weight_decay:
            p *= decay
        if restore:
            np.subtract(p, reference[block], out=tmp)
            tmp *= restore
            p -= tmp
        m *= beta1
        np.multiply(g, 1.0 - beta1, out=tmp)
        m += tmp
        v *= beta2
        np.multiply(g, g, out=tmp)
        tmp *= 1.0 - beta2
        v += tmp
        np.sqrt(v, out=tmp)
        tmp *= root_correction
        tmp += eps
        np.divide(m, tmp, out=tmp)
        tmp *= step_size
        p -= tmp


def all_finite(vector: np.ndarray) -> bool:
    """Whether a flat float32 vector (a gradient, or the weights a step made) may be used: no NaN or
    inf anywhere, nor a value so large that its square overflows (the head's forward squares weights)."""
    # A dot product is the cheapest full pass; any NaN or inf (or overflow) makes it non-finite.
    with np.errstate(over="ignore", invalid="ignore"):
        return math.isfinite(float(np.dot(vector, vector)))


def gradient_is_finite(grad: np.ndarray) -> bool:
    """Whether a gradient may be applied (see ``all_finite``)."""
    return all_finite(grad)


def moments_are_finite(state: AdamState) -> bool:
    """Whether both moments hold only finite values (a full check: it runs only after a failed step)."""
    return bool(np.isfinite(state.exp_avg).all() and np.isfinite(state.exp_avg_sq).all())
