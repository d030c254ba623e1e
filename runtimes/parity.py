"""Parity between a reference and a candidate output (numpy only): metrics, thresholds, the report.

One report type for both checks: a bundle's ONNX graphs against PyTorch (``rada-export onnx`` /
``verify``) and a TensorRT engine against ONNX Runtime FP32 (``rada-export trt``). numpy only, so
the TensorRT check needs no PyTorch on a Jetson.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Thresholds:
    min_cosine: float | None = None
    mean_cosine: float | None = None
    top1_agreement: float | None = None

    def describe(self) -> str:
        parts = []
        if self.mean_cosine is not None:
            parts.append(f"mean cos >= {self.mean_cosine}")
        if self.min_cosine is not None:
            parts.append(f"min cos >= {self.min_cosine}")
        if self.top1_agreement is not None:
            parts.append(f"top-1 >= {100 * self.top1_agreement:g} %")
        return ", ".join(parts)


# Against the PyTorch FP32 reference (INT8 is checked by calibration's report).
THRESHOLDS = {
    "fp32": Thresholds(min_cosine=0.99999, top1_agreement=1.0),
    "fp16": Thresholds(mean_cosine=0.999, min_cosine=0.99, top1_agreement=0.99),
    "int8": Thresholds(mean_cosine=0.98, top1_agreement=0.95),
}


@dataclass
class ParityResult:
    graph: str
    precision: str
    output: str
    samples: int
    max_abs_error: float
    mean_cosine: float
    min_cosine: float
    top1_agreement: float | None  # only for logits
    thresholds: Thresholds
    passed: bool

    def to_dict(self) -> dict:
        d = asdict(self)
        d["thresholds"] = self.thresholds.describe()
        return d


@dataclass
class ParityReport:
    """Every output of every graph checked against its reference, with the verdict."""

    results: list[ParityResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the reader should know about the figures

    @property
    def passed(self) -> bool:
        """Every output within its thresholds; a report that compared nothing has not passed."""
        return bool(self.results) and all(r.passed for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "results": [r.to_dict() for r in self.results], "notes": self.notes}


def row_cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    ref = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    cand = np.asarray(candidate, dtype=np.float64).reshape(len(candidate), -1)
    denom = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    return np.where(denom > 0, (ref * cand).sum(1) / np.maximum(denom, 1e-300), 1.0)


def compare(
    graph: str, precision: str, output: str, reference: np.ndarray, candidate: np.ndarray, is_logits: bool,
    thresholds: Thresholds | None = None,
) -> ParityResult:
    thresholds = thresholds or THRESHOLDS[precision]
    reference = np.asarray(reference, dtype=np.float32)
    candidate = np.asarray(candidate, dtype=np.float32)
    if reference.shape != candidate.shape:
        raise ValueError(f"{graph}/{output}: shape {candidate.shape} differs from the reference {reference.shape}")
    cos = row_cosines(reference, candidate)
    finite = bool(np.isfinite(candidate).all())
    top1 = float((reference.argmax(-1) == candidate.argmax(-1)).mean()) if is_logits else None
    passed = finite
    if thresholds.min_cosine is not None:
        passed &= float(cos.min()) >= thresholds.min_cosine
    if thresholds.mean_cosine is not None:
        passed &= float(cos.mean()) >= thresholds.mean_cosine
    if is_logits and thresholds.top1_agreement is not None:
        passed &= top1 >= thresholds.top1_agreement
    return ParityResult(
        graph=graph, precision=precision, output=output, samples=len(reference),
        max_abs_error=float(np.abs(reference - candidate).max()) if finite else float("inf"),
        mean_cosine=float(cos.mean()), min_cosine=float(cos.min()),
        top1_agreement=top1, thresholds=thresholds, passed=bool(passed),
    )
