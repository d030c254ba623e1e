"""DLA (the deep-learning accelerators of Jetson AGX Orin / Orin NX): where it exists and how each
TensorRT release builds for it. Pure functions; no TensorRT needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rada_export.runtimes.trt_environment import parse_version

JETSON_MARKERS = ("/etc/nv_tegra_release",)
DEVICE_TREE_MODEL = "/proc/device-tree/model"


def is_jetson(markers: tuple[str, ...] = JETSON_MARKERS, model_file: str = DEVICE_TREE_MODEL) -> bool:
    """True on an NVIDIA Jetson (L4T), the only boards with DLA cores."""
    if any(Path(m).exists() for m in markers):
        return True
    try:
        return "jetson" in Path(model_file).read_text(errors="ignore").lower()
    except OSError:
        return False


@dataclass(frozen=True)
class DlaMode:
    """How a DLA engine is built with one TensorRT release (a pure function of the version: :func:`dla_build_mode`)."""

    supported: bool
    strongly_typed: bool
    precision_flags: tuple[str, ...]  # BuilderFlag names set besides GPU_FALLBACK
    reason: str


def dla_build_mode(trt_version: str, precision: str) -> DlaMode:
    """DLA support and build recipe per TensorRT release.

    - 10.0-10.7 (JetPack 6.1/6.2 ship 10.3): DLA takes FP16/INT8 through the builder flags, which a
      strongly typed network forbids, and strongly typed DLA arrived only in 11.4.1. So the network
      is built weakly typed with BuilderFlag.FP16 (and INT8 for the Q/DQ graph), as trtexec does
      there (``trtexec --onnx=... --useDLACore=0 --fp16 [--int8] --allowGPUFallback``; TensorRT
      10.x "Working with DLA", Using trtexec).
    - 10.8 and later 10.x, 11.0-11.3, 11.4.0: no DLA on JetPack ("TensorRT 10.7 was the last 10.x
      release that supported DLA"; 11.x "Working with DLA").
    - 11.4.1 and newer (JetPack 7.2.2+, AGX Orin): strongly typed DLA; precision comes from the
      graph's types, no precision flags (TensorRT 11.4.1 release notes, "Strongly Typed Networks for DLA").
    """
    version = parse_version(trt_version)
    if (10, 0) <= version[:2] < (10, 8):
        flags = ("FP16", "INT8") if precision == "int8" else ("FP16",)
        return DlaMode(True, False, flags, f"TensorRT {trt_version}: weakly typed network with the {'/'.join(flags)} "
                                           "builder flag(s), as trtexec --useDLACore does on 10.x")
    if version[:3] >= (11, 4, 1):
        return DlaMode(True, True, (), f"TensorRT {trt_version}: strongly typed DLA (types from the graph)")
    if version[:1] == (10,):
        why = f"TensorRT {trt_version} has no DLA (10.7 was the last 10.x release with DLA)"
    else:
        why = f"TensorRT {trt_version} has no DLA on Jetson (11.0-11.4.0; it returned in 11.4.1 with JetPack 7.2.2)"
    return DlaMode(False, True, (), why)
