"""Wall-clock timing of repeated calls, shared by `bench`, the demo and the benchmark scripts."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds taken by each of ``repeats`` calls of ``fn``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    return 1000 * statistics.median(time_calls(fn, repeats, warmup))


def recording(fn: Callable, seconds: list[float]) -> Callable:
    """``fn``, appending the seconds each call takes to ``seconds``: to time one stage inside a larger call."""

    def timed(*args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        seconds.append(time.perf_counter() - start)
        return out

    return timed

