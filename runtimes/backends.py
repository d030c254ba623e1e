"""Graph runners: one ONNX graph (or TensorRT engine) behind a `run(feeds) -> outputs` call.

The runtime picks a backend per graph: a TensorRT engine built for this GPU and TensorRT version
where the bundle has one (``rada-export trt`` builds ``--graph model`` by default), ONNX Runtime
(CUDA, else CPU) for the other graphs. :func:`rada_export.runtimes.engine_selection.select_engines`
makes the choice as a pure function of the manifest, the engines folder and this device.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
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
    def __init__(self, engine_path: Path, manifest: Manifest | None = None):
        from .tensorrt_engine import TensorRTEngine

        self.engine = TensorRTEngine(engine_path, manifest)
        self.input_names = list(self.engine.input_names)
        self.output_names = list(self.engine.output_names)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.engine.run(feeds)


@dataclass(frozen=True)
class BackendChoice:
    name: str  # "onnxruntime-cpu", "onnxruntime-cuda", or "tensorrt+onnxruntime-..." when some graph has an engine
    reason: str  # says which graph runs where
    onnxruntime: str = ""  # the ONNX Runtime device for graphs without an engine (default: ``name``)
    engines: dict = field(default_factory=dict)  # graph -> engine path (relative to the bundle)


def choose_backend(bundle: Path, manifest: Manifest, backend: str, device: str, precision: str) -> BackendChoice:
    """Which backend each graph runs on (`auto`, or an explicit request), and why."""
    if backend not in BACKENDS:
        raise RadaError(f"unknown backend {backend!r}", f"use one of {', '.join(BACKENDS)}")
    if device not in ("auto", "cpu", "cuda"):
        raise RadaError(f"unknown device {device!r}", "use 'auto', 'cpu' or 'cuda'")
    placements = {}
    if backend in ("auto", "tensorrt") and device != "cpu":
        placements = _placements(bundle, manifest, precision)
        engines = {g: p.engine for g, p in placements.items() if p.backend == "tensorrt"}
        if backend == "tensorrt" and not engines:
            problem = "; ".join(f"{g}: {p.reason}" for g, p in placements.items())
            raise RadaError(f"cannot use the TensorRT backend: {problem}",
                            "build an engine with `rada-export trt --bundle ...` on this device, or use backend='onnxruntime'")
        if not engines and (bundle / "engines").is_dir():  # engines were built, yet none fits: worth saying
            first = next(iter(placements.values()), None)
            warnings.warn(f"TensorRT not used: {first.reason if first else 'no engine fits'}", stacklevel=3)
    else:
        engines = {}
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available_providers():
        ort, ort_label, alone = "onnxruntime-cuda", "ONNX Runtime CUDA", "ONNX Runtime with the CUDA execution provider"
    elif device == "cuda":
        raise RadaError("ONNX Runtime has no CUDA execution provider here",
                        "pip install 'rada-export[gpu]' (onnxruntime-gpu), or use device='cpu'")
    else:
        ort, ort_label = "onnxruntime-cpu", "ONNX Runtime CPU"
        alone = "ONNX Runtime on the CPU" + (" (no GPU backend available)" if device == "auto" else "")
    if not engines:
        return BackendChoice(ort, alone, ort)
    from .engine_selection import describe_placements

    return BackendChoice(f"tensorrt+{ort}", describe_placements(placements, ort_label), ort, engines)


def _placements(bundle: Path, manifest: Manifest, precision: str) -> dict:
    from .engine_layout import scan_engines
    from .engine_selection import select_engines

    engines = scan_engines(bundle)
    if not engines:
        return select_engines(manifest, {}, None, precision, f"no engines in {bundle / 'engines'}")
    try:
        from .trt_environment import current_engine_environment

        current, unavailable = current_engine_environment(), None
    except RadaError as err:
        current, unavailable = None, f"TensorRT cannot run here ({err.problem.splitlines()[0]})"
    return select_engines(manifest, engines, current, precision, unavailable)


def make_runner(choice: BackendChoice, bundle: Path, manifest: Manifest, graph: str, precision: str) -> GraphRunner:
    engine = choice.engines.get(graph)
    if engine is not None:
        return TrtRunner(bundle / engine, manifest)
    if choice.name == "tensorrt":  # an explicit TensorRT-only choice (rada-export bench): this graph's engine or an error
        from .engine_selection import find_engine

        path = find_engine(bundle, graph, precision)
        if path is None:
            raise RadaError(f"no {graph}.{precision} engine for this GPU in {bundle / 'engines'}",
                            f"run `rada-export trt --bundle {bundle} --graph {graph} --precision {precision}` on this device")
        return TrtRunner(path, manifest)
    entry = manifest.graph(graph, precision)
    ort = choice.onnxruntime or choice.name
    return OrtRunner(bundle / entry.file, "cuda" if ort == "onnxruntime-cuda" else "cpu", entry.precision)
