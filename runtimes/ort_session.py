"""ONNX Runtime sessions with the settings our graphs need."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from rada_export.errors import RadaError


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as err:
        raise RadaError(
            "onnxruntime is not installed",
            "pip install 'rada-export[cpu]' (or '[gpu]' for onnxruntime-gpu; on Jetson, NVIDIA's onnxruntime-gpu wheel for your JetPack)",
        ) from err
    return onnxruntime


def available_providers() -> list[str]:
    return list(import_onnxruntime().get_available_providers())


def resolve_providers(device: str = "cpu", device_id: int = 0) -> list:
    """Execution providers for 'cpu', 'cuda' or 'auto' (CUDA when present, else CPU); ``device_id``:
    the GPU the CUDA provider runs on."""
    have = available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device in ("cuda", "auto"):
        if "CUDAExecutionProvider" in have:
            cuda = ("CUDAExecutionProvider", {"device_id": int(device_id)}) if device_id else "CUDAExecutionProvider"
            return [cuda, "CPUExecutionProvider"]
        if device == "cuda":
            raise RadaError(
                "ONNX Runtime has no CUDA execution provider here",
                "pip install 'rada-export[gpu]' (onnxruntime-gpu) on a machine with an NVIDIA GPU, or use device='cpu'",
                field="device",
            )
        return ["CPUExecutionProvider"]
    raise RadaError(f"unknown device {device!r}", "use 'cpu', 'cuda' or 'auto'", field="device")


# ONNX Runtime's intra-op workers spin after a run, waiting for the next one. In a camera or robotics
# app other threads want those cores between runs (the stream's decoder, capture, control), and the
# spinning workers starve them: on 2 Xeon cores, decoding a 720p video in the stream's own thread
# overlapped nothing with a tiny model's inference (160 fps, 1.06x the serial loop) and slowed
# ViT-B-32 on 1080p (14.4 fps, 0.95x). With the spinning stopped when a run returns
# ("session.force_spinning_stop"), 226 fps (1.61x) and 15.9 fps (1.01x), and a ViT-B-32 224 x 224
# prediction took the same time (50.4-51.2 vs 50.3-50.9 ms); turning spinning off altogether
# ("session.intra_op.allow_spinning" 0) cost that prediction 7 % (53.8 ms).
STOP_SPINNING_BETWEEN_RUNS = ("session.force_spinning_stop", "1")


def in_memory_external_data() -> bool:
    """Whether this ONNX Runtime takes external-data files from memory (1.19 and newer)."""
    return hasattr(import_onnxruntime().SessionOptions, "add_external_initializers_from_files_in_memory")


def create_session(path: str | os.PathLike, device: str = "cpu", precision: str = "fp32", threads: int | None = None, *,
                   model: bytes | None = None, external_data: Mapping[str, Any] | None = None, device_id: int = 0):
    """An InferenceSession for one graph (external data is read from beside the file).

    ``model``: the graph's bytes, already read (and verified) by the caller; ``path`` then only names
    it in messages. ``external_data``: location (as the graph names it) -> that file's bytes, given to
    ONNX Runtime from memory, so that nothing is read from the folder.
    """
    ort = import_onnxruntime()
    path = Path(path)
    if model is None and not path.is_file():
        raise RadaError(f"ONNX graph {path} does not exist", "re-export the bundle")
    options = ort.SessionOptions()
    if external_data:
        names = list(external_data)
        options.add_external_initializers_from_files_in_memory(
            names, [external_data[n] for n in names], [len(external_data[n]) for n in names])
    options.log_severity_level = 3
    options.add_session_config_entry(*STOP_SPINNING_BETWEEN_RUNS)
    if threads:
        options.intra_op_num_threads = threads
    # ONNX Runtime 1.31/1.32 segfaults while creating a CPU session (in its NchwcTransformer stage)
    # on Transpose(perm=[1, 0, 2]) -> MatMul(constant) left unfused, as in every FP16 ViT graph
    # exported before rada-export rewrote that pattern (export/fp16.py, matmul_before_batch_transpose).
    # Graphs exported now load in a bare session; the pass stays off for FP16 graphs so that bundles
    # already on devices keep loading (measured: the old graphs crash with it, run without it), and
    # it has nothing to do in an FP16 graph (it rewrites FP32 Conv and pooling layouts).
    disabled = ["NchwcTransformer"] if precision == "fp16" else []
    try:
        return ort.InferenceSession(model if model is not None else str(path), options, providers=resolve_providers(device, device_id),
                                    disabled_optimizers=disabled)
    except Exception as err:  # onnxruntime raises its own exception types
        raise RadaError(f"ONNX Runtime cannot load {path}: {str(err).splitlines()[0][:300]}", "re-export the bundle") from err
