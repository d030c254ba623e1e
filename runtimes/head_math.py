"""The RAda head's forward pass and its analytic backward, in numpy float32.

The equations are those of DESIGN.md ("The RAda head") and of ``rada_export.head.RAdaHead``, which
this module must match; it never imports torch. The backward is a vector-Jacobian product: given
d loss / d logits (and optionally d loss / d mask) it writes the six projections' gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Optional

import numpy as np

from .head_params import HeadSpec, ParamViews

# Floats per attention map (h x K x K per image) that one forward chunk may hold; bounds memory
# when the logits of a large batch at large K are asked for.
ATTENTION_BUDGET = 1 << 22
_F32 = np.float32


@dataclass
class ForwardCache:
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


# The cache fields with one row per image (the text queries are shared by the batch).
_BATCHED = tuple(f.name for f in fields(ForwardCache) if f.name != "q2")


def take_rows(cache: ForwardCache, rows: np.ndarray) -> ForwardCache:
    """The cache of some of the batch's images."""
    if rows.size == cache.x.shape[0]:
        return cache
    return replace(cache, **{name: getattr(cache, name)[rows] for name in _BATCHED})


def concat_caches(caches: list[ForwardCache]) -> ForwardCache:
    """One cache for the images of several (same weights, same classes)."""
    if len(caches) == 1:
        return caches[0]
    return replace(caches[0], **{name: np.concatenate([getattr(c, name) for c in caches]) for name in _BATCHED})


def cache_bytes(cache: ForwardCache) -> int:
    return sum(getattr(cache, name).nbytes for name in _BATCHED)


def text_queries(p: ParamViews, spec: HeadSpec, text: np.ndarray) -> np.ndarray:
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


def forward(
    p: ParamViews, spec: HeadSpec, f: np.ndarray, text: np.ndarray, q2: np.ndarray, keep: bool
) -> tuple[np.ndarray, np.ndarray, Optional[ForwardCache]]:
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
    cache = ForwardCache(
        x=x, fq=fq, q1=q1, q2=q2, q3=q3, keys=keys, values=values, a1=a1, a2=a2, a3=a3,
        attention=attention, merged=merged, mask=mask,
    )
    return logits, mask, cache


def chunks(rows: int, num_classes: int, num_heads: int) -> list[tuple[int, int]]:
    """Row ranges whose attention maps fit ATTENTION_BUDGET together."""
    step = max(1, ATTENTION_BUDGET // (num_heads * num_classes * num_classes))
    return [(start, min(rows, start + step)) for start in range(0, rows, step)]


def chunked_logits(p: ParamViews, spec: HeadSpec, f: np.ndarray, text: np.ndarray, q2: np.ndarray) -> np.ndarray:
    """Logits, B x K, computed a chunk of rows at a time."""
    out = np.empty((f.shape[0], text.shape[0]), dtype=_F32)
    for start, stop in chunks(f.shape[0], text.shape[0], spec.num_heads):
        out[start:stop] = forward(p, spec, f[start:stop], text, q2, False)[0]
    return out


def chunked_mask(p: ParamViews, spec: HeadSpec, f: np.ndarray, text: np.ndarray, q2: np.ndarray) -> np.ndarray:
    """The mask, B x K x D, computed a chunk of rows at a time."""
    out = np.empty((f.shape[0], text.shape[0], spec.embed_dim), dtype=_F32)
    for start, stop in chunks(f.shape[0], text.shape[0], spec.num_heads):
        out[start:stop] = forward(p, spec, f[start:stop], text, q2, False)[1]
    return out


def _softmax_backward_joint(a: np.ndarray, d_a: np.ndarray, num_classes: int, c: float) -> np.ndarray:
    """Gradient w.r.t. the raw scores of a = K * joint softmax(c * scores)."""
    inner = (d_a * a).sum(axis=(-2, -1), keepdims=True)
    inner *= 1.0 / num_classes
    d = d_a - inner
    d *= a
    d *= c
    return d


def backward(
    p: ParamViews,
    spec: HeadSpec,
    cache: ForwardCache,
    text: np.ndarray,
    d_logits: np.ndarray,
    d_mask: Optional[np.ndarray],
    g: ParamViews,
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
