"""What every graph run must return, checked on every run: the output names the graph's kind
returns, one row per input row, one logit column per class, ``embed_dim`` features, finite values.

A graph is untrusted like the rest of a bundle: one with 3 logit columns for 6 classes, or one that
returns NaN, must stop with one clear error, not give a plausible top-3 (or ``NaN`` in JSON).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from rada_export.errors import RadaError

from .layout import GRAPH_OUTPUTS

_FIX = "re-export the bundle with `rada-export onnx` (and check it with `rada-export verify`)"


def check_outputs(graph: str, outputs: Mapping[str, np.ndarray], rows: int, num_classes: int, embed_dim: int,
                  where: object = "the graph") -> None:
    """Raises a RadaError naming the first output that is not what ``graph`` must return.

    ``num_classes``: the logit columns expected (0: not checked, for graphs without logits)."""
    name = getattr(where, "name", where)
    missing = [n for n in GRAPH_OUTPUTS.get(graph, ()) if n not in outputs]
    if missing:
        raise RadaError(f"{name} returned outputs {sorted(outputs)[:8]}, but a {graph} graph must return "
                        f"{', '.join(GRAPH_OUTPUTS[graph])} (missing: {', '.join(missing)})", _FIX)
    for key in GRAPH_OUTPUTS.get(graph, ()):
        value = np.asarray(outputs[key])
        width = num_classes if key == "logits" else embed_dim
        if value.ndim != 2 or value.shape[0] != rows or (width and value.shape[1] != width):
            want = f"{rows} x {width}" if width else f"{rows} rows"
            what = f"{num_classes} classes" if key == "logits" else f"{embed_dim}-d features"
            raise RadaError(f"{name} returned {key} of shape {' x '.join(map(str, value.shape))} for {rows} input rows "
                            f"and {what}; expected {want}", _FIX)
        if value.dtype.kind != "f":
            raise RadaError(f"{name} returned {key} of type {value.dtype}, not floating point", _FIX)
        if not np.isfinite(value).all():
            bad = int(value.size - np.isfinite(value).sum())
            raise RadaError(f"{name} returned {bad} non-finite value(s) (NaN or Inf) in {key}",
                            "check the input images and the bundle: " + _FIX)


def check_prediction(logits: np.ndarray, features: np.ndarray, num_classes: int) -> None:
    """The logits a prediction reports (from a graph or from the head in numpy): K columns, finite."""
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise RadaError(f"the logits have shape {' x '.join(map(str, logits.shape))}, but there are {num_classes} classes",
                        _FIX)
    if not np.isfinite(logits).all():
        raise RadaError("the prediction's logits hold non-finite values (NaN or Inf)",
                        "reset the adapted head (runtime.reset()) or re-export the bundle")
    if not np.isfinite(np.asarray(features)).all():
        raise RadaError("the image features hold non-finite values (NaN or Inf)", _FIX)
