"""Saving and loading an adapted head's state as a flat dict of numpy arrays.

The dict saves as it is with ``np.savez(path, **head.state())`` and loads back with
``head.load_state(dict(np.load(path)))``. A state is untrusted input: it is checked in full (names,
shapes, dtypes, finiteness, indices, and that it belongs to the same deployed weights) before the
head changes, so a bad one leaves the head as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from rada_export.errors import RadaError

from .head_params import PARAMETER_NAMES, check_matrix, flatten_params, unflatten_params
from .tta import Counters

STATE_FORMAT = 1


@dataclass
class HeadState:
    """Everything of a head that adaptation changes, as flat vectors and plain arrays."""

    params: np.ndarray  # flat weights (see head_params)
    exp_avg: np.ndarray  # flat AdamW first moments
    exp_avg_sq: np.ndarray  # flat AdamW second moments
    adam_step: int
    adapted: bool
    num_classes: int  # the classes the guard window and gathered frames were about
    counters: Counters
    guard_predictions: np.ndarray  # the collapse guard's window, oldest first
    guard_entropies: np.ndarray
    pending: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (features, rows) awaiting a step


def state_to_dict(state: HeadState, deployed_sha256: str, embed_dim: int) -> dict[str, np.ndarray]:
    """The flat dict Head.state() returns; every array is a copy."""
    out: dict[str, np.ndarray] = {
        "format": np.array(STATE_FORMAT),
        "deployed_sha256": np.array(deployed_sha256),
        "num_classes": np.array(state.num_classes),
        "adapted": np.array(state.adapted),
        "adam.step": np.array(state.adam_step),
    }
    for prefix, flat in (("weights", state.params), ("adam.exp_avg", state.exp_avg), ("adam.exp_avg_sq", state.exp_avg_sq)):
        for name, array in unflatten_params(flat, embed_dim).items():
            out[f"{prefix}.{name}"] = array
    for name, value in vars(state.counters).items():
        out[f"counters.{name}"] = np.array(value)
    out["guard.predictions"] = np.array(state.guard_predictions, dtype=np.int64)
    out["guard.entropies"] = np.array(state.guard_entropies, dtype=np.float64)
    out["pending.groups"] = np.array(len(state.pending))
    for i, (f, rows) in enumerate(state.pending):
        out[f"pending.{i}.features"] = f.copy()
        out[f"pending.{i}.rows"] = rows.copy()
    return out


def state_from_dict(state: Mapping[str, Any], deployed_sha256: str, embed_dim: int) -> HeadState:
    """Reads and checks a dict that Head.state() returned, for a head with these deployed weights."""
    dim = embed_dim

    def item(key: str) -> np.ndarray:
        if key not in state:
            raise RadaError(f"head state lacks {key!r}", "pass a dict returned by Head.state()")
        return np.asarray(state[key])

    if int(item("format")) != STATE_FORMAT:
        raise RadaError(f"head state has format {int(item('format'))}, this runtime reads {STATE_FORMAT}")
    if str(item("deployed_sha256")) != deployed_sha256:
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
        flats.append(flatten_params(parts, dim))
    pending = []
    for i in range(int(item("pending.groups"))):
        f = check_matrix(item(f"pending.{i}.features"), "features", dim, f"a B x {dim} float array")
        rows = item(f"pending.{i}.rows").astype(np.int64)
        if rows.ndim != 1 or rows.size == 0 or rows.min() < 0 or rows.max() >= f.shape[0]:
            raise RadaError(f"head state pending.{i}.rows does not index its features")
        pending.append((f, rows))
    return HeadState(
        params=flats[0],
        exp_avg=flats[1],
        exp_avg_sq=flats[2],
        adam_step=int(item("adam.step")),
        adapted=bool(item("adapted")),
        num_classes=int(item("num_classes")),
        counters=Counters(**{name: int(item(f"counters.{name}")) for name in vars(Counters())}),
        guard_predictions=item("guard.predictions").astype(np.int64),
        guard_entropies=item("guard.entropies").astype(np.float64),
        pending=pending,
    )
