"""The head's parameters: its fixed shape, the flat vector that holds the six projections, and the
checks on the weights and feature matrices that callers hand in.

The six projections live in one flat float32 vector (views give each its matrix), so that AdamW,
the anchor and the finiteness check are a handful of whole-vector operations rather than a loop
over parameters; ``q_proj3``, ``k_proj`` and ``v_proj`` sit side by side in it because all three
read the rational matrix, so one matmul computes them and one computes their gradients.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from rada_export.errors import RadaError

PROJECTIONS = ("q_proj1", "q_proj2", "q_proj3", "k_proj", "v_proj", "out_proj")
PARAMETER_NAMES = tuple(f"{p}.{kind}" for p in PROJECTIONS for kind in ("weight", "bias"))

# Storage order in the flat vector: the three projections of the rational matrix first.
_STORAGE = ("q_proj3", "k_proj", "v_proj", "q_proj1", "q_proj2", "out_proj")
_F32 = np.float32


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


def make_spec(embed_dim: int, num_heads: Any, temperature: Any, logit_scale: Any) -> HeadSpec:
    """A HeadSpec from a caller's settings, each checked."""
    integral = isinstance(num_heads, (int, np.integer)) and not isinstance(num_heads, bool)
    if not (integral and num_heads >= 1 and embed_dim % num_heads == 0):
        raise RadaError(
            f"num_heads={num_heads!r} does not divide embed_dim {embed_dim}", "use the head's own num_heads (8)"
        )
    for name, value in (("logit_scale", logit_scale), ("temperature", temperature)):
        if not (isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value) and value > 0):
            raise RadaError(f"{name}={value!r} must be a positive finite number", f"use the head's own {name}")
    return HeadSpec(embed_dim, int(num_heads), float(temperature), float(logit_scale))


@dataclass(frozen=True)
class ParamViews:
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


def param_views(flat: np.ndarray, dim: int) -> ParamViews:
    square, weights_end = dim * dim, 6 * dim * dim
    w = flat[:weights_end].reshape(6, dim, dim)
    b = flat[weights_end:].reshape(6, dim)
    return ParamViews(
        w_rkv=flat[: 3 * square].reshape(3 * dim, dim),
        b_rkv=flat[weights_end : weights_end + 3 * dim],
        w_q1=w[3],
        b_q1=b[3],
        w_q2=w[4],
        b_q2=b[4],
        w_out=w[5],
        b_out=b[5],
    )


def flatten_params(weights: Mapping[str, Any], dim: int) -> np.ndarray:
    """The flat float32 vector of weights named as in nn.Linear."""
    flat = np.empty(6 * dim * (dim + 1), dtype=_F32)
    for name, (where, shape) in _slices(dim).items():
        flat[where] = np.asarray(weights[name], dtype=_F32).reshape(-1)
    return flat


def unflatten_params(flat: np.ndarray, dim: int) -> dict[str, np.ndarray]:
    """Copies of the flat vector's pieces under their nn.Linear names."""
    slices = _slices(dim)
    return {name: flat[slices[name][0]].reshape(slices[name][1]).copy() for name in PARAMETER_NAMES}


def fingerprint(flat: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(flat).view(np.uint8)).hexdigest()


def check_matrix(value: Any, name: str, columns: int, expected: str) -> np.ndarray:
    """A float32 copy of a finite 2-d array with ``columns`` columns and at least one row."""
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


def check_weights(weights: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], int]:
    """The six projections' arrays by nn.Linear name, and the embedding width they share."""
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
