"""Graph runners: one ONNX graph (or TensorRT engine) behind a `run(feeds) -> outputs` call.

The runtime picks a backend per bundle: a TensorRT engine built for this GPU and TensorRT version,
else ONNX Runtime on CUDA, else ONNX Runtime on the CPU.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from rada_export.errors import RadaError

from .manifest import Manifest
from .ort_session import available_providers, create_session

BACKENDS = ("auto", "onnxruntime", "tensorrt")


class GraphRunner(Protocol):
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class OrtRunner:
    def __init__(self, path: Path, device: str, precision: str):
        self.session = create_session(path, device, precision)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.providers = self.session.get_providers()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(None, feeds)))


class TrtRunner:
    def __init__(self, engine_path: Path):
        from .tensorrt_engine import TensorRTEngine

        self.engine = TensorRTEngine(engine_path)
        self.input_names = list(self.engine.input_names)
        self.output_names = list(self.engine.output_names)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.engine.run(feeds)


@dataclass(frozen=True)
class BackendChoice:
    name: str  # "tensorrt", "onnxruntime-cuda", "onnxruntime-cpu"
    reason: str


def choose_backend(bundle: Path, manifest: Manifest, backend: str, device: str, precision: str) -> BackendChoice:
    """Which backend `auto` (or an explicit request) resolves to, and why."""
    if backend not in BACKENDS:
        raise RadaError(f"unknown backend {backend!r}", f"use one of {', '.join(BACKENDS)}")
    if device not in ("auto", "cpu", "cuda"):
        raise RadaError(f"unknown device {device!r}", "use 'auto', 'cpu' or 'cuda'")
    if backend in ("auto", "tensorrt") and device != "cpu":
        problem = _tensorrt_problem(bundle, precision)
        if problem is None:
            return BackendChoice("tensorrt", f"a TensorRT engine built for this GPU ({precision})")
        if backend == "tensorrt":
            raise RadaError(f"cannot use the TensorRT backend: {problem}", "build one with `rada-export trt --bundle ...` on this device, or use backend='onnxruntime'")
        if (bundle / "engines").is_dir():  # engines were built, yet none fits: worth saying
            warnings.warn(f"TensorRT not used: {problem}", stacklevel=3)
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available_providers():
        return BackendChoice("onnxruntime-cuda", "ONNX Runtime with the CUDA execution provider")
    if device == "cuda":
        raise RadaError("ONNX Runtime has no CUDA execution provider here",
                        "pip install 'rada-export[gpu]' (onnxruntime-gpu), or use device='cpu'")
    return BackendChoice("onnxruntime-cpu", "ONNX Runtime on the CPU" + (" (no GPU backend available)" if device == "auto" else ""))


def _tensorrt_problem(bundle: Path, precision: str) -> str | None:
    """None when an engine for this GPU and TensorRT version exists; else what is missing."""
    try:
        from .tensorrt_engine import find_engine
    except ImportError as err:  # the module itself imports tensorrt lazily; this is a broken install
        return f"the TensorRT backend cannot be imported ({err})"
    try:
        engine = find_engine(bundle, "image_encoder", precision)
    except RadaError as err:
        return err.problem
    if engine is None:
        return f"no {precision} image_encoder engine for this GPU and TensorRT version in {bundle / 'engines'}"
    return None


def make_runner(choice: BackendChoice, bundle: Path, manifest: Manifest, graph: str, precision: str) -> GraphRunner:
    if choice.name == "tensorrt":
        from .tensorrt_engine import find_engine

        engine = find_engine(bundle, graph, precision)
        if engine is None:
            raise RadaError(f"no {graph}.{precision} engine for this GPU in {bundle / 'engines'}",
                            f"run `rada-export trt --bundle {bundle} --graph {graph} --precision {precision}` on this device")
        return TrtRunner(engine)
    entry = manifest.graph(graph, precision)
    return OrtRunner(bundle / entry.file, "cuda" if choice.name == "onnxruntime-cuda" else "cpu", entry.precision)
