"""The RAda head in numpy, with an analytic backward so that it can adapt on the device.

The equations are those of DESIGN.md ("The RAda head") and of ``rada_export.head.RAdaHead``, which
this module must match; it never imports torch. Everything runs in float32.

The six projections live in one flat float32 vector (views give each its matrix), so that AdamW,
the anchor and the finiteness check are a handful of whole-vector operations rather than a loop
over parameters; ``q_proj3``, ``k_proj`` and ``v_proj`` sit side by side in it because all three
read the rational matrix, so one matmul computes them and one computes their gradients.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import threading
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np

from rada_export.errors import RadaError
from rada_export.runtimes.tta import TTAConfig

PROJECTIONS = ("q_proj1", "q_proj2", "q_proj3", "k_proj", "v_proj", "out_proj")
PARAMETER_NAMES = tuple(f"{p}.{kind}" for p in PROJECTIONS for kind in ("weight", "bias"))
HEAD_FILE = "head.safetensors"
TEXT_FEATURES_FILE = "text_features.npy"
STATE_FORMAT = 1

# Storage order in the flat vector: the three projections of the rational matrix first.
_STORAGE = ("q_proj3", "k_proj", "v_proj", "q_proj1", "q_proj2", "out_proj")
# Floats per attention map (h x K x K per image) that one forward chunk may hold; bounds memory
# when logits() gets a large batch at large K.
_ATTENTION_BUDGET = 1 << 22
_F32 = np.float32
# Elements per AdamW block: five float32 blocks (params, grad, two moments, scratch) fit in L2.
_ADAM_BLOCK = 1 << 16
# Bytes of forward intermediates that continual adaptation may hold for frames awaiting a step.
_PENDING_BUDGET = 64 << 20


# ----------------------------------------------------------------------------------------------
# Parameters


@dataclass(frozen=True)
class HeadSpec:
    """The fixed (non-trained) shape of the head."""

    embed_dim: int
    num_heads: int
    temperature: float
    logit_scale: float

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def score_scale(self) -> float:
        return 1.0 / (math.sqrt(self.head_dim) * self.temperature)

    @property
    def size(self) -> int:
        return 6 * self.embed_dim * (self.embed_dim + 1)


@dataclass(frozen=True)
class _Views:
    """Named views into one flat parameter (or gradient) vector; writing them writes the vector."""

    w_rkv: np.ndarray  # 3D x D: q_proj3, k_proj, v_proj weights stacked
    b_rkv: np.ndarray  # 3D
    w_q1: np.ndarray
    b_q1: np.ndarray
    w_q2: np.ndarray
    b_q2: np.ndarray
    w_out: np.ndarray
    b_out: np.ndarray


def _slices(dim: int) -> dict[str, tuple[slice, tuple[int, ...]]]:
    square, weights_end = dim * dim, 6 * dim * dim
    out: dict[str, tuple[slice, tuple[int, ...]]] = {}
    for i, name in enumerate(_STORAGE):
        out[f"{name}.weight"] = (slice(i * square, (i + 1) * square), (dim, dim))
        out[f"{name}.bias"] = (slice(weights_end + i * dim, weights_end + (i + 1) * dim), (dim,))
    return out


def _views(flat: np.ndarray, dim: int) -> _Views:
    square, weights_end = dim * dim, 6 * dim * dim
    w = flat[:weights_end].reshape(6, dim, dim)
    b = flat[weights_end:].reshape(6, dim)
    return _Views(
        w_rkv=flat[: 3 * square].reshape(3 * dim, dim),
        b_rkv=flat[weights_end : weights_end + 3 * dim],
        w_q1=w[3],
        b_q1=b[3],
        w_q2=w[4],
        b_q2=b[4],
        w_out=w[5],
        b_out=b[5],
    )


def _flatten(weights: Mapping[str, Any], dim: int) -> np.ndarray:
    flat = np.empty(6 * dim * (dim + 1), dtype=_F32)
    for name, (where, shape) in _slices(dim).items():
        flat[where] = np.asarray(weights[name], dtype=_F32).reshape(-1)
    return flat


def _unflatten(flat: np.ndarray, dim: int) -> dict[str, np.ndarray]:
    slices = _slices(dim)
    return {name: flat[slices[name][0]].reshape(slices[name][1]).copy() for name in PARAMETER_NAMES}


def _fingerprint(flat: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(flat).view(np.uint8)).hexdigest()


# ----------------------------------------------------------------------------------------------
# Forward and backward


@dataclass
class _Cache:
    """The forward's intermediates that the backward needs."""

    x: np.ndarray  # B x K x D: s * f * t, the scaled rational matrix
    fq: np.ndarray  # B x D: sqrt(s) * f, the image query's input
    q1: np.ndarray  # B x h x 1 x dh
    q2: np.ndarray  # h x K x dh
    q3: np.ndarray  # B x h x K x dh
    keys: np.ndarray  # B x h x K x dh
    values: np.ndarray  # B x h x K x dh
    a1: np.ndarray  # B x h x 1 x K: the image stream's row softmax (its K rows are equal)
    a2: np.ndarray  # B x h x K x K: K * joint softmax, text stream
    a3: np.ndarray  # B x h x K x K: K * joint softmax, rational stream
    attention: np.ndarray  # B x h x K x K: a1 + a2 + a3
    merged: np.ndarray  # B x K x D: heads concatenated, before out_proj
    mask: np.ndarray  # B x K x D


def _text_queries(p: _Views, spec: HeadSpec, text: np.ndarray) -> np.ndarray:
    """q_proj2(sqrt(s) t) split into heads, h x K x dh; depends on the weights and the classes only."""
    q = (math.sqrt(spec.logit_scale) * text) @ p.w_q2.T
    q += p.b_q2
    return _split(q, spec.num_heads)


def _split(x: np.ndarray, heads: int) -> np.ndarray:
    *lead, k, d = x.shape
    return np.swapaxes(x.reshape(*lead, k, heads, d // heads), -3, -2)


def _row_softmax(z: np.ndarray) -> np.ndarray:
    z -= z.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def _joint_softmax(z: np.ndarray, num_classes: int) -> np.ndarray:
    """K * softmax over each trailing K x K matrix as a whole, in place."""
    z -= z.max(axis=(-2, -1), keepdims=True)
    np.exp(z, out=z)
    z *= num_classes / z.sum(axis=(-2, -1), keepdims=True)
    return z


def _forward(
    p: _Views, spec: HeadSpec, f: np.ndarray, text: np.ndarray, q2: np.ndarray, keep: bool
) -> tuple[np.ndarray, np.ndarray, Optional[_Cache]]:
    """Logits (B x K) and mask (B x K x D) for features f (B x D); the cache when ``keep``."""
    s, h, dh, c = spec.logit_scale, spec.num_heads, spec.head_dim, spec.score_scale
    batch, dim = f.shape
    k = text.shape[0]
    x = (s * f)[:, None, :] * text[None, :, :]
    rkv = x.reshape(batch * k, dim) @ p.w_rkv.T
    rkv += p.b_rkv
    rkv = rkv.reshape(batch, k, 3, h, dh)
    q3 = rkv[:, :, 0].transpose(0, 2, 1, 3)
    keys = rkv[:, :, 1].transpose(0, 2, 1, 3)
    values = rkv[:, :, 2].transpose(0, 2, 1, 3)
    fq = math.sqrt(s) * f
    q1 = fq @ p.w_q1.T
    q1 += p.b_q1
    q1 = q1.reshape(batch, h, 1, dh)
    keys_t = np.swapaxes(keys, -1, -2)

    def scores(q: np.ndarray) -> np.ndarray:
        z = q @ keys_t
        z *= c
        return z

    a1 = _row_softmax(scores(q1))
    a2 = _joint_softmax(scores(q2), k)
    a3 = _joint_softmax(scores(q3), k)
    attention = a2 + a3
    attention += a1
    attended = attention @ values
    attended *= 1.0 / 3.0
    merged = attended.transpose(0, 2, 1, 3).reshape(batch, k, dim)
    mask = merged.reshape(batch * k, dim) @ p.w_out.T
    mask += p.b_out
    mask += 1.0
    np.maximum(mask, 0.0, out=mask)
    mask = mask.reshape(batch, k, dim)
    logits = np.einsum("bkd,bkd->bk", mask, x)
    if not keep:
        return logits, mask, None
    cache = _Cache(
        x=x, fq=fq, q1=q1, q2=q2, q3=q3, keys=keys, values=values, a1=a1, a2=a2, a3=a3,
        attention=attention, merged=merged, mask=mask,
    )
    return logits, mask, cache


def _softmax_backward_joint(a: np.ndarray, d_a: np.ndarray, num_classes: int, c: float) -> np.ndarray:
    """Gradient w.r.t. the raw scores of a = K * joint softmax(c * scores)."""
    inner = (d_a * a).sum(axis=(-2, -1), keepdims=True)
    inner *= 1.0 / num_classes
    d = d_a - inner
    d *= a
    d *= c
    return d


def _backward(
    p: _Views,
    spec: HeadSpec,
    cache: _Cache,
    text: np.ndarray,
    d_logits: np.ndarray,
    d_mask: Optional[np.ndarray],
    g: _Views,
) -> None:
    """Writes into ``g`` the gradients of a loss with d loss/d logits and d loss/d mask given."""
    c, k = spec.score_scale, text.shape[0]
    batch, _, dim = cache.x.shape
    bk = batch * k
    h = spec.num_heads

    # logits = sum_d M * x
    d_m = d_logits[:, :, None] * cache.x
    if d_mask is not None:
        d_m += d_mask
    # relu(1 + O): the gradient stops where the mask is clamped (torch also gives 0 at 0)
    d_m *= cache.mask > 0.0
    d_off = d_m.reshape(bk, dim)
    np.matmul(d_off.T, cache.merged.reshape(bk, dim), out=g.w_out)
    np.sum(d_off, axis=0, out=g.b_out)
    d_att = (d_off @ p.w_out).reshape(batch, k, h, spec.head_dim).transpose(0, 2, 1, 3)
    d_att *= 1.0 / 3.0

    d_a = d_att @ np.swapaxes(cache.values, -1, -2)
    d_values = np.swapaxes(cache.attention, -1, -2) @ d_att
    # The image stream's K rows are one row repeated, so its gradient is the sum over rows.
    d_a1 = d_a.sum(axis=-2, keepdims=True)
    d_s1 = d_a1 - (d_a1 * cache.a1).sum(axis=-1, keepdims=True)
    d_s1 *= cache.a1
    d_s1 *= c
    d_s2 = _softmax_backward_joint(cache.a2, d_a, k, c)
    d_s3 = _softmax_backward_joint(cache.a3, d_a, k, c)

    d_q1 = d_s1 @ cache.keys
    d_q2 = (d_s2 @ cache.keys).sum(axis=0)  # the text queries are shared by the batch
    d_q3 = d_s3 @ cache.keys
    d_keys = np.swapaxes(d_s1, -1, -2) @ cache.q1
    d_keys += np.swapaxes(d_s2, -1, -2) @ cache.q2
    d_keys += np.swapaxes(d_s3, -1, -2) @ cache.q3

    d_rkv = np.empty((batch, k, 3, h, spec.head_dim), dtype=_F32)
    d_rkv[:, :, 0] = d_q3.transpose(0, 2, 1, 3)
    d_rkv[:, :, 1] = d_keys.transpose(0, 2, 1, 3)
    d_rkv[:, :, 2] = d_values.transpose(0, 2, 1, 3)
    d_rkv = d_rkv.reshape(bk, 3 * dim)
    np.matmul(d_rkv.T, cache.x.reshape(bk, dim), out=g.w_rkv)
    np.sum(d_rkv, axis=0, out=g.b_rkv)

    d_q1 = d_q1.reshape(batch, dim)
    np.matmul(d_q1.T, cache.fq, out=g.w_q1)
    np.sum(d_q1, axis=0, out=g.b_q1)
    d_q2 = d_q2.transpose(1, 0, 2).reshape(k, dim)
    np.matmul(d_q2.T, math.sqrt(spec.logit_scale) * text, out=g.w_q2)
    np.sum(d_q2, axis=0, out=g.b_q2)


# ----------------------------------------------------------------------------------------------
# Losses (value and gradient w.r.t. the logits)


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


# ----------------------------------------------------------------------------------------------
# AdamW


@dataclass
class AdamState:
    """AdamW moments over the flat parameter vector, and the step count for bias correction."""

    exp_avg: np.ndarray
    exp_avg_sq: np.ndarray
    step: int = 0

    @classmethod
    def zeros(cls, size: int) -> "AdamState":
        return cls(np.zeros(size, dtype=_F32), np.zeros(size, dtype=_F32), 0)

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
    """One AdamW step in place, as torch.optim.AdamW computes it (decoupled decay, bias-corrected).

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
    for start in range(0, params.size, _ADAM_BLOCK):
        block = slice(start, start + _ADAM_BLOCK)
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


# ----------------------------------------------------------------------------------------------
# Collapse guard


@dataclass
class _Window:
    """The last ``size`` continual predictions and their entropies, with a running histogram."""

    size: int
    num_classes: int
    predictions: np.ndarray = field(init=False)
    entropies: np.ndarray = field(init=False)
    counts: np.ndarray = field(init=False)
    position: int = 0
    filled: int = 0

    def __post_init__(self) -> None:
        self.predictions = np.zeros(self.size, dtype=np.int64)
        self.entropies = np.zeros(self.size, dtype=np.float64)
        self.counts = np.zeros(self.num_classes, dtype=np.int64)

    def clear(self) -> None:
        self.counts.fill(0)
        self.position = self.filled = 0

    def push(self, prediction: int, ent: float) -> None:
        if self.filled == self.size:
            self.counts[self.predictions[self.position]] -= 1
        else:
            self.filled += 1
        self.predictions[self.position] = prediction
        self.entropies[self.position] = ent
        self.counts[prediction] += 1
        self.position = (self.position + 1) % self.size

    def full(self) -> bool:
        return self.filled == self.size

    def top_share(self) -> float:
        return float(self.counts.max()) / max(1, self.filled)

    def mean_entropy(self) -> float:
        return float(self.entropies[: self.filled].mean()) if self.filled else 0.0

    def chronological(self) -> tuple[np.ndarray, np.ndarray]:
        if self.filled < self.size:
            return self.predictions[: self.filled].copy(), self.entropies[: self.filled].copy()
        order = np.roll(np.arange(self.size), -self.position)
        return self.predictions[order].copy(), self.entropies[order].copy()


@dataclass
class Counters:
    """What adaptation has done so far; kept across reset() (they describe the whole run)."""

    frames: int = 0  # frames (rows) seen by adapt()
    updates: int = 0  # AdamW steps applied, continual and episodic
    skipped_unconfident: int = 0  # frames too unsure to learn from (entropy >= e_margin * ln K)
    skipped_nonfinite: int = 0  # frames with non-finite logits, plus steps with a non-finite gradient
    resets: int = 0  # collapse-guard resets to the deployed head
    episodes: int = 0  # adapt_episodic() calls


@dataclass(frozen=True)
class EpisodeReport:
    """What the last adapt_episodic() did."""

    kept: np.ndarray  # indices of the views kept at the first step, lowest entropy first
    loss_before: float  # their marginal entropy at the starting weights (nan when no step ran)
    loss_after: float  # the same views' marginal entropy at the adapted weights
    steps: int  # AdamW steps taken (fewer than asked when a gradient was not finite)


@dataclass
class _Pending:
    """Confident frames awaiting the next continual step.

    Their forward caches are kept, so the step needs no second forward; the frames were seen by
    the same weights that the step starts from, because no step happens in between.
    """

    caches: list[_Cache] = field(default_factory=list)
    d_logits: list[np.ndarray] = field(default_factory=list)  # EATA-weighted dH/dlogits per row
    inputs: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (call features, rows)
    rows: int = 0
    nbytes: int = 0

    def clear(self) -> None:
        self.caches.clear()
        self.d_logits.clear()
        self.inputs.clear()
        self.rows = self.nbytes = 0


_BATCHED = tuple(f.name for f in fields(_Cache) if f.name != "q2")


def _take(cache: _Cache, rows: np.ndarray) -> _Cache:
    if rows.size == cache.x.shape[0]:
        return cache
    return replace(cache, **{name: getattr(cache, name)[rows] for name in _BATCHED})


def _concat(caches: list[_Cache]) -> _Cache:
    if len(caches) == 1:
        return caches[0]
    return replace(caches[0], **{name: np.concatenate([getattr(c, name) for c in caches]) for name in _BATCHED})


def _cache_bytes(cache: _Cache) -> int:
    return sum(getattr(cache, name).nbytes for name in _BATCHED)


# ----------------------------------------------------------------------------------------------
# Input checks


def _check_matrix(value: Any, name: str, columns: int, expected: str) -> np.ndarray:
    try:
        array = np.asarray(value)
    except Exception as err:  # e.g. ragged nested lists
        raise RadaError(f"{name} could not be read as an array ({err})", f"pass {expected}") from err
    if array.dtype.kind != "f":
        raise RadaError(f"{name} has dtype {array.dtype}, expected floating point", f"pass {expected}")
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] != columns:
        raise RadaError(f"{name} has shape {array.shape}, expected {expected}", f"pass {expected}")
    # A copy: the head keeps some inputs (text features, frames awaiting a step), and callers
    # often reuse their buffers. Values beyond float32 become inf, reported just below.
    with np.errstate(over="ignore"):
        array = np.array(array, dtype=_F32, order="C", copy=True)
    if not np.isfinite(array).all():
        raise RadaError(
            f"{name} holds NaN or infinite values (or values beyond float32 range)",
            "check the encoder output for this input; the head was left unchanged",
        )
    return array


def _check_weights(weights: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], int]:
    if not isinstance(weights, Mapping):
        raise RadaError(f"head weights must be a mapping of name -> array, got {type(weights).__name__}")
    # The paper's checkpoints name the projections under a module "mha".
    named = {(k[4:] if k.startswith("mha.") else k): v for k, v in weights.items()}
    missing = [n for n in PARAMETER_NAMES if n not in named]
    if missing:
        raise RadaError(
            f"head weights lack {', '.join(missing)}",
            f"pass all of {', '.join(PARAMETER_NAMES)} (weight is out x in, as in nn.Linear)",
        )
    arrays = {n: np.asarray(named[n]) for n in PARAMETER_NAMES}
    dim = arrays["q_proj1.weight"].shape[-1] if arrays["q_proj1.weight"].ndim == 2 else -1
    for name, array in arrays.items():
        want = (dim, dim) if name.endswith(".weight") else (dim,)
        if array.dtype.kind != "f" or array.shape != want or dim < 1:
            raise RadaError(
                f"head weight {name} has shape {array.shape} and dtype {array.dtype}, "
                f"expected floating point of shape {want}",
                "pass the six D x D projections and their D biases of one head",
            )
        if not np.isfinite(array).all():
            raise RadaError(f"head weight {name} holds NaN or infinite values", "re-export or retrain the head")
    return arrays, dim


# ----------------------------------------------------------------------------------------------
# The head


class _Work:
    """One thread's private buffers for episodic adaptation: an episode's weights, gradient and moments."""

    def __init__(self, size: int, dim: int):
        self.params = np.empty(size, dtype=_F32)
        self.p = _views(self.params, dim)
        self.grad = np.zeros(size, dtype=_F32)
        self.g = _views(self.grad, dim)
        self.scratch = np.empty(size, dtype=_F32)
        self.adam = AdamState.zeros(size)


class Head:
    """The RAda head on the device: logits, and test-time adaptation of its six projections.

    ``features`` are image features, B x D, L2-normalised (as the encoder engines give them);
    text features are K x D, L2-normalised. Any floating dtype is accepted; compute is float32.
    Bad input raises a RadaError and leaves the head as it was.

    Threads may share a head. Continual adaptation, class changes, reset and load_state take a
    lock, so continual updates apply in some serial order. The weights are copy-on-write: an
    update makes a new weight vector, so logits() reads one consistent set of weights without
    waiting for the lock (beyond taking a reference). Each episodic episode adapts a private copy
    of the weights in buffers of its own thread and never changes the shared head; the counters
    are shared, ``last_episode`` is per thread.
    """

    def __init__(
        self,
        weights: Mapping[str, np.ndarray],
        text_features: np.ndarray,
        *,
        logit_scale: float,
        num_heads: int = 8,
        temperature: float = 1.0,
        tta: Optional[TTAConfig] = None,
    ):
        arrays, dim = _check_weights(weights)
        integral = isinstance(num_heads, (int, np.integer)) and not isinstance(num_heads, bool)
        if not (integral and num_heads >= 1 and dim % num_heads == 0):
            raise RadaError(
                f"num_heads={num_heads!r} does not divide embed_dim {dim}", "use the head's own num_heads (8)"
            )
        for name, value in (("logit_scale", logit_scale), ("temperature", temperature)):
            if not (isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value) and value > 0):
                raise RadaError(f"{name}={value!r} must be a positive finite number", f"use the head's own {name}")
        if tta is None:
            tta = TTAConfig()
        elif not isinstance(tta, TTAConfig):
            raise RadaError(f"tta must be a TTAConfig, got {type(tta).__name__}", "pass TTAConfig(...) or None")
        self.spec = HeadSpec(dim, int(num_heads), float(temperature), float(logit_scale))
        self.tta = tta
        self._deployed = _flatten(arrays, dim)
        self._deployed.setflags(write=False)
        self._deployed_sha256 = _fingerprint(self._deployed)
        self._lock = threading.RLock()
        self._local = threading.local()  # per thread: episodic buffers and the last episode's report
        self._params = self._deployed.copy()
        self._p = _views(self._params, dim)
        self._spare: Optional[np.ndarray] = None  # the previous weights, reused by the next step if free
        self._grad = np.zeros_like(self._params)
        self._g = _views(self._grad, dim)
        self._scratch = np.empty_like(self._params)
        self._adam = AdamState.zeros(self._params.size)
        self._pending = _Pending()
        self._adapted = False  # whether continual adaptation has moved the weights
        self._version = 0  # bumps whenever the weights or the classes change
        self._q2: Optional[np.ndarray] = None
        self._q2_version = -1
        self.counters = Counters()
        self._text = np.zeros((1, dim), dtype=_F32)
        self._window = _Window(tta.collapse_window, 1)
        self.set_text_features(text_features)

    @classmethod
    def from_bundle(cls, path: Union[str, os.PathLike], *, tta: Optional[TTAConfig] = None) -> "Head":
        """Reads ``head.safetensors``, ``text_features.npy`` and the head config of a bundle.

        The two files are checked against the manifest's checksums when it lists them.
        """
        from safetensors.numpy import load_file

        from rada_export.runtimes.manifest import read_manifest, verify_checksums

        bundle = Path(path)
        manifest = read_manifest(bundle)
        listed = [rel for rel in (HEAD_FILE, TEXT_FEATURES_FILE) if rel in manifest.files]
        if listed:
            verify_checksums(bundle, manifest, only=listed)
        for rel in (HEAD_FILE, TEXT_FEATURES_FILE):
            if not (bundle / rel).is_file():
                raise RadaError(f"bundle {bundle} has no {rel}", "re-export the bundle with its head")
        try:
            weights = load_file(str(bundle / HEAD_FILE))
        except Exception as err:
            raise RadaError(
                f"{bundle / HEAD_FILE} is not a readable safetensors file ({err})", "re-export the bundle"
            ) from err
        # The head checkpoint may carry its own copy of the text features; the .npy file rules.
        weights.pop("text_features", None)
        try:
            text = np.load(bundle / TEXT_FEATURES_FILE, allow_pickle=False)
        except Exception as err:
            raise RadaError(
                f"{bundle / TEXT_FEATURES_FILE} is not a readable .npy file ({err})", "re-export the bundle"
            ) from err
        config = manifest.head
        head = cls(
            weights,
            text,
            logit_scale=config.logit_scale,
            num_heads=config.num_heads,
            temperature=config.temperature,
            tta=tta,
        )
        if head.embed_dim != config.embed_dim:
            raise RadaError(
                f"bundle head weights are {head.embed_dim}-d but its manifest says {config.embed_dim}",
                "re-export the bundle",
            )
        return head

    # -- properties ---------------------------------------------------------------------------

    @property
    def embed_dim(self) -> int:
        return self.spec.embed_dim

    @property
    def num_classes(self) -> int:
        return self._text.shape[0]

    @property
    def text_features(self) -> np.ndarray:
        return self._text.copy()

    @property
    def adapted(self) -> bool:
        """True while continual adaptation has the weights away from the deployed ones."""
        return self._adapted

    @property
    def frames(self) -> int:
        return self.counters.frames

    @property
    def updates(self) -> int:
        return self.counters.updates

    @property
    def skipped_nonfinite(self) -> int:
        return self.counters.skipped_nonfinite

    @property
    def skipped_unconfident(self) -> int:
        return self.counters.skipped_unconfident

    @property
    def resets(self) -> int:
        return self.counters.resets

    @property
    def last_episode(self) -> Optional[EpisodeReport]:
        """This thread's last adapt_episodic() episode: which views were kept, loss before and after."""
        return getattr(self._local, "episode", None)

    @last_episode.setter
    def last_episode(self, report: Optional[EpisodeReport]) -> None:
        self._local.episode = report

    @property
    def pending_frames(self) -> int:
        """Confident frames gathered for the next continual step."""
        return self._pending.rows

    def weights(self, deployed: bool = False) -> dict[str, np.ndarray]:
        """A copy of the current (or the deployed) weights under their nn.Linear names."""
        return _unflatten(self._deployed if deployed else self._params, self.embed_dim)  # _params is never written in place

    # -- inference ----------------------------------------------------------------------------

    def set_text_features(self, text_features: np.ndarray) -> None:
        """Changes the classes (K x D). Adapted weights are kept (they are not per class); frames
        awaiting a step and the collapse guard's window are dropped (they were about other classes)."""
        text = _check_matrix(text_features, "text_features", self.embed_dim, f"a K x {self.embed_dim} float array")
        with self._lock:
            self._text = text
            self._version += 1
            self._pending.clear()
            self._window = _Window(self.tta.collapse_window, text.shape[0])

    def _snapshot(self) -> tuple[np.ndarray, _Views, np.ndarray, np.ndarray]:
        """Weights (flat and as views), text features and text queries that belong together; none
        of them is ever written in place, so they stay consistent after the lock is released."""
        with self._lock:
            return self._params, self._p, self._text, self._text_queries()

    def logits(self, features: np.ndarray) -> np.ndarray:
        """Logits, B x K float32, of the current weights."""
        f = self._features(features)
        return self._logits(f, *self._snapshot()[1:])

    def _logits(self, f: np.ndarray, p: _Views, text: np.ndarray, q2: np.ndarray) -> np.ndarray:
        out = np.empty((f.shape[0], text.shape[0]), dtype=_F32)
        for start, stop in self._chunks(f.shape[0], text.shape[0]):
            out[start:stop] = _forward(p, self.spec, f[start:stop], text, q2, False)[0]
        return out

    def mask(self, features: np.ndarray) -> np.ndarray:
        """The mask M = relu(1 + O), B x K x D float32, of the current weights."""
        f = self._features(features)
        _, p, text, q2 = self._snapshot()
        out = np.empty((f.shape[0], text.shape[0], self.embed_dim), dtype=_F32)
        for start, stop in self._chunks(f.shape[0], text.shape[0]):
            out[start:stop] = _forward(p, self.spec, f[start:stop], text, q2, False)[1]
        return out

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return self.logits(features)

    # -- continual adaptation -----------------------------------------------------------------

    def adapt(self, features: np.ndarray) -> np.ndarray:
        """Continual TTA on the next frames (B x D, usually B = 1); returns their logits, B x K.

        The logits are those of the weights before any update (the prediction to act on). Then
        the confident frames join the batch for the next AdamW step, which is taken once
        ``continual_batch`` of them are gathered; unless the collapse guard resets the head first.
        """
        f = self._features(features)
        with self._lock:  # one frame batch at a time: each sees the weights the previous ones left
            return self._adapt(f)

    def _adapt(self, f: np.ndarray) -> np.ndarray:
        # Overflow is possible with absurd (finite) inputs: it is caught, counted and skipped below.
        with np.errstate(over="ignore", invalid="ignore"):
            logits, _, cache = _forward(self._p, self.spec, f, self._text, self._text_queries(), True)
        self.counters.frames += f.shape[0]
        ent, d_ent = entropy_and_grad(logits)
        finite = np.isfinite(logits).all(axis=1) & np.isfinite(ent)
        self.counters.skipped_nonfinite += int(f.shape[0] - finite.sum())
        if self._observe(logits, ent, finite):
            return logits
        confident = finite & (ent < self.tta.entropy_limit(self.num_classes))
        self.counters.skipped_unconfident += int((finite & ~confident).sum())
        if confident.any() and self.tta.continual_lr > 0.0:
            assert cache is not None
            self._enqueue(f, cache, ent, d_ent, np.flatnonzero(confident))
            if self._pending.rows >= self.tta.continual_batch or self._pending.nbytes >= _PENDING_BUDGET:
                self._continual_step()
        return logits

    def continual_loss(self, features: np.ndarray) -> float:
        """The continual objective of one step on these frames at the current weights.

        Mean over the confident frames of ``exp(limit - H) * H`` (weights held constant), plus
        ``mask_anchor * mean((M - 1)^2)`` over them, plus ``anchor / 2 * ||theta - theta_0||^2``.
        """
        f = self._features(features)
        with self._lock:
            return self._continual_loss(f)

    def _continual_loss(self, f: np.ndarray) -> float:
        logits, mask, _ = _forward(self._p, self.spec, f, self._text, self._text_queries(), False)
        ent = entropy(logits)
        limit = self.tta.entropy_limit(self.num_classes)
        confident = np.isfinite(ent) & (ent < limit)
        cfg = self.tta
        loss = 0.0
        if confident.any():
            weight = np.exp(limit - ent[confident].astype(np.float64))
            loss += float((weight * ent[confident]).mean())
            if cfg.mask_anchor:
                loss += cfg.mask_anchor * float(np.square(mask[confident].astype(np.float64) - 1.0).mean())
        if cfg.anchor:
            drift = (self._params - self._deployed).astype(np.float64)
            loss += 0.5 * cfg.anchor * float(drift @ drift)
        return loss

    def continual_gradients(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """The gradient of ``continual_loss`` on these frames: what one continual step descends."""
        f = self._features(features)
        with self._lock:
            return self._continual_gradients(f)

    def _continual_gradients(self, f: np.ndarray) -> dict[str, np.ndarray]:
        pending = _Pending()
        logits, _, cache = _forward(self._p, self.spec, f, self._text, self._text_queries(), True)
        ent, d_ent = entropy_and_grad(logits)
        confident = np.isfinite(ent) & (ent < self.tta.entropy_limit(self.num_classes))
        self._grad.fill(0.0)
        if confident.any():
            assert cache is not None
            self._enqueue(f, cache, ent, d_ent, np.flatnonzero(confident), pending)
            self._continual_gradient(pending)
        if self.tta.anchor:
            self._grad += self.tta.anchor * (self._params - self._deployed)
        return _unflatten(self._grad, self.embed_dim)

    def _enqueue(
        self,
        f: np.ndarray,
        cache: _Cache,
        ent: np.ndarray,
        d_ent: np.ndarray,
        rows: np.ndarray,
        pending: Optional[_Pending] = None,
    ) -> None:
        pending = self._pending if pending is None else pending
        limit = self.tta.entropy_limit(self.num_classes)
        # EATA's sample weights are constants (no gradient through them): surer frames count more.
        weight = np.exp(limit - ent[rows].astype(np.float64)).astype(_F32)
        kept = _take(cache, rows)
        pending.caches.append(kept)
        pending.d_logits.append(d_ent[rows] * weight[:, None])
        pending.inputs.append((f, rows))
        pending.rows += rows.size
        pending.nbytes += _cache_bytes(kept)

    def _continual_gradient(self, pending: _Pending) -> None:
        """Writes the gradient of the gathered frames' loss, anchors on weights excluded, to _grad."""
        cache = _concat(pending.caches)
        n = pending.rows
        d_logits = np.concatenate(pending.d_logits) * (1.0 / n)
        d_mask = None
        if self.tta.mask_anchor:
            d_mask = cache.mask - 1.0
            d_mask *= 2.0 * self.tta.mask_anchor / d_mask.size
        _backward(self._p, self.spec, cache, self._text, d_logits, d_mask, self._g)

    def _continual_step(self) -> None:
        cfg = self.tta
        self._continual_gradient(self._pending)
        self._pending.clear()
        if not self._grad_finite(self._grad) or cfg.continual_lr == 0.0:
            return
        # Copy-on-write: readers that took the old weights keep a consistent (older) set. The
        # buffer two steps old is reused when no reader holds it any more (its only references
        # are then this local name and getrefcount's argument), which saves an allocation.
        spare, self._spare = self._spare, None
        if spare is None or sys.getrefcount(spare) > 2:
            spare = np.empty_like(self._params)
        adamw_step(
            self._params, self._grad, self._adam, lr=cfg.continual_lr, weight_decay=cfg.continual_weight_decay,
            betas=cfg.betas, eps=cfg.eps, scratch=self._scratch, anchor=cfg.anchor, restore=cfg.restore,
            reference=self._deployed, out=spare,
        )
        self._spare = self._params
        self._set_params(spare)
        self.counters.updates += 1
        self._adapted = True

    def _observe(self, logits: np.ndarray, ent: np.ndarray, finite: np.ndarray) -> bool:
        """Feeds the collapse guard; on collapse resets to the deployed head and returns True."""
        cfg, window, k = self.tta, self._window, self.num_classes
        predictions = logits.argmax(axis=1)
        for row in np.flatnonzero(finite):
            window.push(int(predictions[row]), float(ent[row]))
        if not window.full():
            return False
        collapsed = window.top_share() > cfg.share_limit(k)
        if cfg.collapse_entropy and k > 1:
            collapsed = collapsed or window.mean_entropy() < cfg.collapse_entropy * math.log(k)
        if not collapsed:
            return False
        window.clear()
        # The deployed head seeing the stream this way is the stream, not collapse: look again.
        if not self._adapted:
            return False
        self._restore_deployed()
        self.counters.resets += 1
        return True

    # -- episodic adaptation ------------------------------------------------------------------

    def adapt_episodic(self, view_features: np.ndarray, original: Optional[np.ndarray] = None, *,
                       _snapshot: Optional[tuple] = None) -> np.ndarray:
        """TPT on one image: adapt on its N views (N x D), return the original's logits (1 x K).

        ``original`` (D or 1 x D) defaults to view 0. Each step keeps the ``keep`` fraction of
        views with the lowest entropy and takes an AdamW step (fresh moments per image) on the
        entropy of their mean softmax. Afterwards the weights are back where they were: the
        deployed head, or the continual weights if continual adaptation is under way.
        ``last_episode`` then tells which views were kept and their loss before and after.
        """
        views = self._features(view_features)
        if original is None:
            first = views[:1]
        else:
            array = np.asarray(original)
            first = self._features(array.reshape(1, -1) if array.ndim == 1 else array)
            if first.shape[0] != 1:
                raise RadaError(
                    f"original has {first.shape[0]} rows, expected one image", "pass one D or 1 x D feature"
                )
        cfg = self.tta
        # The episode starts from the shared weights (deployed, or continual ones) and adapts a
        # private copy in this thread's buffers: other threads' episodes and predictions never see it.
        base, _, text, q2 = self._snapshot() if _snapshot is None else _snapshot
        work = self._work()
        np.copyto(work.params, base)
        work.adam.clear()
        p = work.p
        kept: Optional[np.ndarray] = None
        loss_before, steps, nonfinite = math.nan, 0, 0
        try:
            for _ in range(cfg.steps):
                order = self._kept(views, p, text, q2)
                if order is None:
                    nonfinite += 1
                    break
                kept = order if kept is None else kept
                logits, _, cache = _forward(p, self.spec, views[order], text, q2, True)
                loss, d_logits = marginal_entropy_and_grad(logits)
                loss_before = loss if steps == 0 else loss_before
                assert cache is not None
                _backward(p, self.spec, cache, text, d_logits, None, work.g)
                if not self._grad_finite(work.grad):
                    nonfinite += 1
                    break
                if cfg.lr == 0.0:
                    break
                adamw_step(work.params, work.grad, work.adam, lr=cfg.lr, weight_decay=cfg.weight_decay,
                           betas=cfg.betas, eps=cfg.eps, scratch=work.scratch, reference=self._deployed)
                q2 = _text_queries(p, self.spec, text)
                steps += 1
            # One forward for the prediction and for the kept views' loss after adaptation.
            rows = first if kept is None else np.concatenate([first, views[kept]])
            out = self._logits(rows, p, text, q2)
            loss_after = marginal_entropy_and_grad(out[1:])[0] if kept is not None else math.nan
            self.last_episode = EpisodeReport(
                kept=np.zeros(0, dtype=np.int64) if kept is None else kept,
                loss_before=loss_before,
                loss_after=loss_after,
                steps=steps,
            )
            return out[:1].copy()
        finally:
            with self._lock:
                self.counters.episodes += 1
                self.counters.updates += steps
                self.counters.skipped_nonfinite += nonfinite

    def _work(self) -> _Work:
        work = getattr(self._local, "work", None)
        if work is None:
            work = self._local.work = _Work(self._params.size, self.embed_dim)
        return work

    def episodic_loss(self, view_features: np.ndarray) -> float:
        """TPT's objective at the current weights: entropy of the kept views' mean softmax."""
        views = self._features(view_features)
        _, p, text, q2 = self._snapshot()
        order = self._kept(views, p, text, q2)
        if order is None:
            return math.nan
        return marginal_entropy_and_grad(self._logits(views[order], p, text, q2))[0]

    def episodic_gradients(self, view_features: np.ndarray) -> dict[str, np.ndarray]:
        """The gradient of ``episodic_loss``: what the first adapt_episodic() step descends."""
        views = self._features(view_features)
        with self._lock:
            _, p, text, q2 = self._snapshot()
            order = self._kept(views, p, text, q2)
            if order is None:
                raise RadaError("the views give non-finite logits", "check the encoder output for this image")
            logits, _, cache = _forward(p, self.spec, views[order], text, q2, True)
            _, d_logits = marginal_entropy_and_grad(logits)
            assert cache is not None
            _backward(p, self.spec, cache, text, d_logits, None, self._g)
            return _unflatten(self._grad, self.embed_dim)

    def _kept(self, views: np.ndarray, p: _Views, text: np.ndarray, q2: np.ndarray) -> Optional[np.ndarray]:
        """Indices of the views TPT keeps, lowest entropy first; None when the logits are not finite."""
        ent = entropy(self._logits(views, p, text, q2))
        if not np.isfinite(ent).all():
            return None
        return np.argsort(ent, kind="stable")[: self.tta.kept_views(views.shape[0])]

    # -- gradients (exposed for checks) -------------------------------------------------------

    def gradients(
        self, features: np.ndarray, d_logits: np.ndarray, d_mask: Optional[np.ndarray] = None
    ) -> dict[str, np.ndarray]:
        """Vector-Jacobian product: the gradient of sum(d_logits * logits) + sum(d_mask * mask)."""
        f = self._features(features)
        with self._lock:
            _, _, cache = _forward(self._p, self.spec, f, self._text, self._text_queries(), True)
            assert cache is not None
            d_logits = np.ascontiguousarray(d_logits, dtype=_F32).reshape(f.shape[0], self.num_classes)
            if d_mask is not None:
                d_mask = np.ascontiguousarray(d_mask, dtype=_F32).reshape(f.shape[0], self.num_classes, self.embed_dim)
            _backward(self._p, self.spec, cache, self._text, d_logits, d_mask, self._g)
            return _unflatten(self._grad, self.embed_dim)

    # -- state --------------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to the deployed weights, with fresh optimizer state, no gathered frames and a
        fresh collapse guard. The counters are kept."""
        with self._lock:
            self._restore_deployed()

    def state(self) -> dict[str, np.ndarray]:
        """Weights, optimizer moments, counters, guard window and gathered frames, as a flat dict
        of numpy arrays.

        It saves as it is with ``np.savez(path, **head.state())`` and loads back with
        ``head.load_state(dict(np.load(path)))`` into a head built from the same bundle.
        """
        with self._lock:
            return self._state()

    def _state(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {
            "format": np.array(STATE_FORMAT),
            "deployed_sha256": np.array(self._deployed_sha256),
            "num_classes": np.array(self.num_classes),
            "adapted": np.array(self._adapted),
            "adam.step": np.array(self._adam.step),
        }
        dim = self.embed_dim
        for prefix, flat in (
            ("weights", self._params),
            ("adam.exp_avg", self._adam.exp_avg),
            ("adam.exp_avg_sq", self._adam.exp_avg_sq),
        ):
            for name, array in _unflatten(flat, dim).items():
                out[f"{prefix}.{name}"] = array
        for name, value in vars(self.counters).items():
            out[f"counters.{name}"] = np.array(value)
        out["guard.predictions"], out["guard.entropies"] = self._window.chronological()
        out["pending.groups"] = np.array(len(self._pending.inputs))
        for i, (f, rows) in enumerate(self._pending.inputs):
            out[f"pending.{i}.features"] = f.copy()
            out[f"pending.{i}.rows"] = rows.copy()
        return out

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restores what state() returned; the head must have the same deployed weights.

        The state is checked in full before anything changes, so a bad one leaves the head as it was.
        """
        with self._lock:
            self._load_state(state)

    def _load_state(self, state: Mapping[str, Any]) -> None:
        dim = self.embed_dim

        def item(key: str) -> np.ndarray:
            if key not in state:
                raise RadaError(f"head state lacks {key!r}", "pass a dict returned by Head.state()")
            return np.asarray(state[key])

        if int(item("format")) != STATE_FORMAT:
            raise RadaError(f"head state has format {int(item('format'))}, this runtime reads {STATE_FORMAT}")
        if str(item("deployed_sha256")) != self._deployed_sha256:
            raise RadaError(
                "head state was saved from a head with other deployed weights",
                "load it into a head built from the same bundle",
            )
        flats = []
        for prefix in ("weights", "adam.exp_avg", "adam.exp_avg_sq"):
            parts = {}
            for name in PARAMETER_NAMES:
                array = item(f"{prefix}.{name}")
                want = (dim, dim) if name.endswith(".weight") else (dim,)
                if array.shape != want or array.dtype.kind != "f" or not np.isfinite(array).all():
                    raise RadaError(f"head state {prefix}.{name} has shape {array.shape}, expected finite {want}")
                parts[name] = array
            flats.append(_flatten(parts, dim))
        step = int(item("adam.step"))
        counters = Counters(**{name: int(item(f"counters.{name}")) for name in vars(Counters())})
        predictions = item("guard.predictions").astype(np.int64)
        entropies = item("guard.entropies").astype(np.float64)
        same_classes = int(item("num_classes")) == self.num_classes
        groups = []
        for i in range(int(item("pending.groups"))):
            f = self._features(item(f"pending.{i}.features"))
            rows = item(f"pending.{i}.rows").astype(np.int64)
            if rows.ndim != 1 or rows.size == 0 or rows.min() < 0 or rows.max() >= f.shape[0]:
                raise RadaError(f"head state pending.{i}.rows does not index its features")
            groups.append((f, rows))
        # Everything is checked; now the head may change.
        self._set_params(flats[0])
        self._adam.exp_avg[...] = flats[1]
        self._adam.exp_avg_sq[...] = flats[2]
        self._adam.step = step
        self._adapted = bool(item("adapted"))
        self._version += 1
        self.counters = counters
        self._window = _Window(self.tta.collapse_window, self.num_classes)
        self._pending.clear()
        if not same_classes:
            return  # the window and gathered frames were about other classes
        for p, e in zip(predictions[-self._window.size :], entropies[-self._window.size :]):
            if 0 <= p < self.num_classes:
                self._window.push(int(p), float(e))
        # The gathered frames' caches are recomputed: same weights and inputs give the same values.
        for f, rows in groups:
            logits, _, cache = _forward(self._p, self.spec, f, self._text, self._text_queries(), True)
            ent, d_ent = entropy_and_grad(logits)
            assert cache is not None
            self._enqueue(f, cache, ent, d_ent, rows)

    # -- internals ----------------------------------------------------------------------------

    def _features(self, features: Any) -> np.ndarray:
        return _check_matrix(features, "features", self.embed_dim, f"a B x {self.embed_dim} float array")

    def _chunks(self, rows: int, num_classes: Optional[int] = None) -> list[tuple[int, int]]:
        k = self.num_classes if num_classes is None else num_classes
        per_row = self.spec.num_heads * k * k
        step = max(1, _ATTENTION_BUDGET // per_row)
        return [(start, min(rows, start + step)) for start in range(0, rows, step)]

    def _text_queries(self) -> np.ndarray:
        if self._q2_version != self._version or self._q2 is None:
            self._q2 = _text_queries(self._p, self.spec, self._text)
            self._q2_version = self._version
        return self._q2

    def _grad_finite(self, grad: np.ndarray) -> bool:
        """Whether a gradient may be applied; a non-finite one is counted (continual) and skipped."""
        # A dot product is the cheapest full pass; any NaN or inf (or overflow) makes it non-finite.
        if math.isfinite(float(np.dot(grad, grad))):
            return True
        if grad is self._grad:
            self.counters.skipped_nonfinite += 1
        return False

    def _set_params(self, params: np.ndarray) -> None:
        """Publishes new weights (never written in place afterwards: readers may hold them)."""
        self._params = params
        self._p = _views(params, self.spec.embed_dim)
        self._version += 1

    def _restore_deployed(self) -> None:
        self._set_params(self._deployed.copy())
        self._adam.clear()
        self._pending.clear()
        self._adapted = False
        self._version += 1
        self._window.clear()
