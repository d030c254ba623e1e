"""How close the INT8 graph stays to FP32, on held-out images, both in ONNX Runtime on the CPU.

Image features are compared by cosine (mean and minimum over the images); logits by top-1
agreement. The image encoder has no logits of its own: both its FP32 and INT8 features go through
the bundle's FP32 head (or zero-shot CLIP when the bundle has no head graph), so a difference in
top-1 comes from the encoder alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rada_export.runtimes.ort_session import create_session
from rada_export.runtimes.parity import THRESHOLDS, ParityResult, Thresholds, compare

from .dataset import to_pixels

FEATURE_THRESHOLDS = Thresholds(mean_cosine=THRESHOLDS["int8"].mean_cosine)
LOGIT_THRESHOLDS = Thresholds(top1_agreement=THRESHOLDS["int8"].top1_agreement)


@dataclass
class AccuracyReport:
    graph: str  # the manifest key of the INT8 graph, e.g. "model.int8"
    samples: int
    features: ParityResult
    logits: ParityResult
    logits_from: str  # "graph", "head graph" or "zero-shot"

    @property
    def passed(self) -> bool:
        return self.features.passed and self.logits.passed

    @property
    def mean_cosine(self) -> float:
        return self.features.mean_cosine

    @property
    def min_cosine(self) -> float:
        return self.features.min_cosine

    @property
    def top1_agreement(self) -> float:
        return float(self.logits.top1_agreement)

    def figures(self) -> dict[str, Any]:
        return {
            "held_out_images": self.samples, "mean_cosine": self.mean_cosine, "min_cosine": self.min_cosine,
            "top1_agreement": self.top1_agreement, "logits_from": self.logits_from,
            "max_abs_feature_error": self.features.max_abs_error, "passed": self.passed,
        }

    def describe(self) -> str:
        return (f"{self.graph}: mean cosine {self.mean_cosine:.4f} (min {self.min_cosine:.4f}), "
                f"top-1 agreement {100 * self.top1_agreement:.1f} % on {self.samples} held-out images")


@dataclass
class CalibrationReport:
    """Every graph's report; what a VerificationError carries when INT8 falls short."""

    reports: list[AccuracyReport]
    thresholds: str = f"mean cosine >= {FEATURE_THRESHOLDS.mean_cosine}, top-1 agreement >= {100 * LOGIT_THRESHOLDS.top1_agreement:g} %"

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.reports)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "thresholds": self.thresholds,
                "graphs": {r.graph: r.figures() for r in self.reports}}

    def describe(self) -> str:
        return "; ".join(r.describe() for r in self.reports) + f" (thresholds: {self.thresholds})"


def _run(path: Path, frames: np.ndarray, input_name: str, wants_frames: bool, cfg: Any, precision: str,
         batch_size: int, on_batch: Callable[[int], None]) -> dict[str, np.ndarray]:
    session = create_session(path, "cpu", precision)
    names = [o.name for o in session.get_outputs()]
    collected: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for start in range(0, len(frames), batch_size):
        chunk = frames[start:start + batch_size]
        feed = np.ascontiguousarray(chunk) if wants_frames else to_pixels(chunk, cfg)
        for name, value in zip(names, session.run(None, {input_name: feed})):
            collected[name].append(value)
        on_batch(1)
    return {n: np.concatenate(v) for n, v in collected.items()}


def head_logits(features: np.ndarray, text_features: np.ndarray, head_path: Path | None, logit_scale: float) -> tuple[np.ndarray, str]:
    """Logits for image features: the bundle's FP32 head graph, else zero-shot CLIP."""
    if head_path is not None and head_path.is_file():
        session = create_session(head_path, "cpu", "fp32")
        feed = {"image_features": features.astype(np.float32), "text_features": text_features.astype(np.float32)}
        return session.run(["logits"], feed)[0], "head graph"
    return logit_scale * features @ text_features.T, "zero-shot"


def accuracy_report(
    key: str,
    fp32_path: Path,
    int8_path: Path,
    frames: np.ndarray,
    input_name: str,
    wants_frames: bool,
    preprocess_cfg: Any,
    text_features: np.ndarray | None = None,
    head_path: Path | None = None,
    logit_scale: float = 100.0,
    batch_size: int = 8,
    on_batch: Callable[[int], None] = lambda n: None,
) -> AccuracyReport:
    """INT8 against FP32 on ``frames`` (held-out images); ``text_features`` is needed for graphs without logits."""
    ref = _run(fp32_path, frames, input_name, wants_frames, preprocess_cfg, "fp32", batch_size, on_batch)
    got = _run(int8_path, frames, input_name, wants_frames, preprocess_cfg, "int8", batch_size, on_batch)
    if "logits" in ref:
        ref_logits, got_logits, source = ref["logits"], got["logits"], "graph"
    else:
        if text_features is None:
            raise ValueError("the graph has no logits output: pass the bundle's text features")
        ref_logits, source = head_logits(ref["image_features"], text_features, head_path, logit_scale)
        got_logits, _ = head_logits(got["image_features"], text_features, head_path, logit_scale)
    features = compare(key, "int8", "image_features", ref["image_features"], got["image_features"], False, FEATURE_THRESHOLDS)
    logits = compare(key, "int8", "logits", ref_logits, got_logits, True, LOGIT_THRESHOLDS)
    return AccuracyReport(graph=key, samples=len(frames), features=features, logits=logits, logits_from=source)
