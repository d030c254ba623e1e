"""Splitting a batch into the slices an engine's optimisation profile accepts. numpy only, pure functions."""

from __future__ import annotations

import numpy as np

from rada_export.errors import RadaError


def plan_chunks(total: int, low: int, high: int) -> list[tuple[int, int, int]]:
    """(start, stop, rows sent) per engine call for ``total`` rows and a profile accepting ``low``..``high``.

    Slices hold at most ``high`` rows; a last slice below ``low`` (fixed-batch DLA engines) is
    padded up to ``low`` rows and its extra outputs are dropped.
    """
    if low < 1 or high < low:
        raise RadaError(f"the engine's batch range {low}..{high} is not usable", "rebuild the engine with rada-export trt")
    chunks = []
    for start in range(0, int(total), high):
        stop = min(start + high, int(total))
        chunks.append((start, stop, max(stop - start, low)))
    return chunks


def take_rows(array: np.ndarray, start: int, stop: int, size: int) -> np.ndarray:
    """Rows ``start:stop`` of ``array`` as a contiguous array of ``size`` rows (one slice of :func:`plan_chunks`)."""
    part = array[start:stop]
    if size > len(part):  # pad with copies of the last row; its outputs are dropped
        part = np.concatenate([part, np.repeat(part[-1:], size - len(part), axis=0)])
    return np.ascontiguousarray(part)
