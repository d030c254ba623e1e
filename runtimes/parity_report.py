"""The parity report: every output of every graph checked against its reference, with the verdict.

One type for both checks: a bundle's ONNX graphs against PyTorch (``rada-export onnx`` / ``verify``)
and a TensorRT engine against ONNX Runtime FP32 (``rada-export trt``). numpy only, through
:mod:`rada_export.runtimes.parity`, so the TensorRT check needs no PyTorch on a Jetson.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .parity import ParityResult


@dataclass
class ParityReport:
    results: list[ParityResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the reader should know about the figures

    @property
    def passed(self) -> bool:
        """Every output within its thresholds; a report that compared nothing has not passed."""
        return bool(self.results) and all(r.passed for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "results": [r.to_dict() for r in self.results], "notes": self.notes}
