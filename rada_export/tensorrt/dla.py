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


# What --dla-core does with INT8: refused. JetPack 6's DLA takes INT8 through per-tensor dynamic ranges
# from the implicit calibrators ("the required calibrator for DLA": IInt8EntropyCalibrator2,
# docs.nvidia.com/deeplearning/tensorrt/latest/_static/c-api/class_i_int8_entropy_calibrator2.html,
# deprecated in 10.1), not from a graph's Q/DQ nodes; NVIDIA's qdq-translator
# (github.com/NVIDIA/Deep-Learning-Accelerator-SW, tools/qdq-translator) exists to turn Q/DQ into
# such a calibration cache. Built with the INT8 flag, the Q/DQ layers would leave the DLA and the
# engine would run on the GPU: that is not done silently, it is refused with this advice.
DLA_INT8_PROBLEM = ("the DLA on JetPack 6 (TensorRT 10.x) takes INT8 only from a calibration cache (implicit quantization), "
                    "not from the Q/DQ graph that rada-export makes: an INT8 DLA engine would run its quantized "
                    "layers on the GPU")
DLA_INT8_FIX = ("build precision='fp16' with dla_core=N (FP16 on the DLA, the graph's FP32 layers on the GPU with "
                "gpu_fallback=True), or precision='int8' without a DLA core (INT8 on the GPU); NVIDIA's qdq-translator "
                "(Deep-Learning-Accelerator-SW) turns a Q/DQ graph into a DLA calibration cache, outside rada-export")


@dataclass(frozen=True)
class DlaMode:
    """How a DLA engine is built with one TensorRT release (a pure function of the version: :func:`dla_build_mode`)."""

    supported: bool
    strongly_typed: bool
    precision_flags: tuple[str, ...]  # BuilderFlag names set besides GPU_FALLBACK
    reason: str
    # Weakly typed builds: OBEY_PRECISION_CONSTRAINTS, and every layer the graph types FP32 (LayerNorm,
    # the L2 norms, the head: the FP16 graph's FP32 islands) pinned to FP32 precision and output types.
    pin_fp32_layers: bool = False


def dla_build_mode(trt_version: str, precision: str) -> DlaMode:
    """DLA support and build recipe per TensorRT release.

    - 10.0-10.7 (JetPack 6.1/6.2 ship 10.3): DLA takes FP16/INT8 through the builder flags, which a
      strongly typed network forbids, and strongly typed DLA arrived only in 11.4.1. So the network
      is built weakly typed with BuilderFlag.FP16 (and INT8 for the Q/DQ graph), as trtexec does
      there (``trtexec --onnx=... --useDLACore=0 --fp16 [--int8] --allowGPUFallback``; TensorRT
      10.x "Working with DLA", Using trtexec). With the FP16 flag alone TensorRT may run any layer in
      FP16, the graph's FP32 islands too; so the build sets OBEY_PRECISION_CONSTRAINTS and pins
      those layers' precision and output types to FP32 (ILayer::setPrecision / setOutputType: "the
      preferred or required computational precision of this layer in a weakly-typed network",
      TensorRT 10.2 C++ API, docs.nvidia.com/deeplearning/sdk/tensorrt-api/c_api/classnvinfer1_1_1_i_layer.html;
      "Reduced Precision", docs.nvidia.com/deeplearning/tensorrt/10.16.1/inference-library/precision-control.html).
      FP32 layers cannot run on the DLA (FP16/INT8 only): they are among those that go to the GPU.
      The OBEY/PREFER flags are removed in 11.x ("Strongly Typed Networks for DLA", 11.4.1), where
      strong typing does the same.
    - 10.8 and later 10.x, 11.0-11.3, 11.4.0: no DLA on JetPack ("TensorRT 10.7 was the last 10.x
      release that supported DLA"; 11.x "Working with DLA").
    - 11.4.1 and newer (JetPack 7.2.2+, AGX Orin): strongly typed DLA; precision comes from the
      graph's types, no precision flags (TensorRT 11.4.1 release notes, "Strongly Typed Networks for DLA").
    """
    version = parse_version(trt_version)
    if (10, 0) <= version[:2] < (10, 8):
        flags = ("FP16", "INT8") if precision == "int8" else ("FP16",)
        return DlaMode(True, False, flags, f"TensorRT {trt_version}: weakly typed network with the {'/'.join(flags)} "
                                           "builder flag(s), as trtexec --useDLACore does on 10.x, and "
                                           "OBEY_PRECISION_CONSTRAINTS with the graph's FP32 layers pinned to FP32 "
                                           "(they run on the GPU)", pin_fp32_layers=True)
    if version[:3] >= (11, 4, 1):
        return DlaMode(True, True, (), f"TensorRT {trt_version}: strongly typed DLA (types from the graph)")
    if version[:1] == (10,):
        why = f"TensorRT {trt_version} has no DLA (10.7 was the last 10.x release with DLA)"
    else:
        why = f"TensorRT {trt_version} has no DLA on Jetson (11.0-11.4.0; it returned in 11.4.1 with JetPack 7.2.2)"
    return DlaMode(False, True, (), why)
