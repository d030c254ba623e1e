"""Peak memory of this process, for the summaries of the commands that handle big models.

The kernel keeps the high-water mark of each process's resident set (``ru_maxrss``), so reading
it costs nothing and needs no sampling thread. Children are counted separately: a command that
runs its work in a subprocess reports both.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass

GIB = 1024**3


def _maxrss_bytes(who: int) -> int:
    # Linux reports kilobytes, macOS bytes.
    value = resource.getrusage(who).ru_maxrss
    return int(value) if sys.platform == "darwin" else int(value) * 1024


def peak_rss_bytes() -> int:
    """The highest resident set size this process has had so far, in bytes."""
    return _maxrss_bytes(resource.RUSAGE_SELF)


def peak_children_rss_bytes() -> int:
    """The highest resident set size among this process's finished, waited-for children, in bytes."""
    return _maxrss_bytes(resource.RUSAGE_CHILDREN)


@dataclass(frozen=True)
class PeakMemory:
    """A peak resident set size, and what it is measured against (the model's FP32 weights)."""

    peak_bytes: int
    weights_bytes: int | None = None

    @property
    def ratio(self) -> float | None:
        return self.peak_bytes / self.weights_bytes if self.weights_bytes else None

    def describe(self) -> str:
        """'peak memory 9.8 GiB (2.5x the FP32 weights)' or 'peak memory 9.8 GiB'."""
        text = f"peak memory {self.peak_bytes / GIB:.1f} GiB"
        if self.ratio is not None:
            text += f" ({self.ratio:.1f}x the FP32 weights)"
        return text


def parameter_bytes(module) -> int:
    """Bytes of a torch module's parameters and buffers as they are held (FP32 for open_clip models)."""
    seen: set[int] = set()
    total = 0
    for tensor in list(module.parameters()) + list(module.buffers()):
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        total += tensor.numel() * tensor.element_size()
    return total


def peak_memory(weights_bytes: int | None = None) -> PeakMemory:
    """This process's peak so far, against ``weights_bytes`` when given."""
    return PeakMemory(peak_rss_bytes(), weights_bytes)
