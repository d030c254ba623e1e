"""Graph runners: one ONNX graph (or TensorRT engine) behind a `run(feeds) -> outputs` call.

The runtime picks a backend per graph: a TensorRT engine built for this GPU and TensorRT version
where the bundle has one (``rada-export trt`` builds ``--graph model`` by default), ONNX Runtime
(CUDA, else CPU) for the other graphs. :func:`rada_export.runtimes.engine_selection.select_engines`
makes the choice as a pure function of the manifest, the engines folder and this device. Where the
graphs would run on the CPU and OpenVINO is installed, ``auto`` runs them all on OpenVINO instead
(runtimes/openvino_backend.py): same graphs, faster on CPUs.

Given a ``VerifiedBundle`` (what ``load_bundle`` holds), a runner is made from the graph's verified
bytes (runtimes/bundle/verified.py), never from the path. Every backend failure while running
becomes one RadaError line (a renamed output, an allocation the device refuses...).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from rada_export.errors import RadaError

from .bundle.verified import VerifiedBundle
from .manifest import GraphEntry, Manifest
from .openvino_backend import INSTALL as OPENVINO_INSTALL
from .openvino_backend import OPENVINO, OpenVinoPlan, cpu_info, openvino_installed, plan_openvino
from .ort_session import available_providers, create_session, in_memory_external_data

BACKENDS = ("auto", "onnxruntime", "openvino", "tensorrt")


class GraphRunner(Protocol):
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def backend_error(name: str, err: BaseException) -> RadaError:
    """A backend's failure while running a graph, as one line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return RadaError(f"{name} failed while running: {type(err).__name__}: {(lines[0] if lines else '')[:300]}",
                     "check that the bundle's graphs are the ones it was exported with (re-export it), and that the "
                     "device has the memory the batch needs (use a smaller batch_size)")


class OrtRunner:
    def __init__(self, path: Path, device: str, precision: str, *, model: bytes | None = None,
                 external_data: dict | None = None, threads: int | None = None, device_id: int = 0):
        self.path = Path(path)
        self.session = create_session(path, device, precision, threads, model=model, external_data=external_data,
                                      device_id=device_id)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.providers = self.session.get_providers()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            outputs = self.session.run(None, feeds)
        except Exception as err:  # onnxruntime raises its own exception types (Fail, RuntimeException...)
            raise backend_error(f"ONNX Runtime on {self.path.name}", err) from None
        return dict(zip(self.output_names, outputs))


class TrtRunner:
    def __init__(self, engine_path: Path, manifest: Manifest | None = None):
        from .tensorrt_engine import TensorRTEngine

        self.path = Path(engine_path)
        self.engine = TensorRTEngine(engine_path, manifest)
        self.input_names = list(self.engine.input_names)
        self.output_names = list(self.engine.output_names)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return self.engine.run(feeds)
        except RadaError:
            raise
        except Exception as err:  # TensorRT and CUDA raise their own types
            raise backend_error(f"TensorRT on {self.path.name}", err) from None


@dataclass(frozen=True)
class BackendChoice:
    name: str  # "onnxruntime-cpu", "onnxruntime-cuda", "openvino", or "tensorrt+onnxruntime-..." when some graph has an engine
    reason: str  # says which graph runs where
    onnxruntime: str = ""  # the ONNX Runtime device for graphs without an engine (default: ``name``)
    engines: dict = field(default_factory=dict)  # graph -> engine path (relative to the bundle)
    openvino: OpenVinoPlan | None = None  # set when OpenVINO runs the graphs
    picked_by_auto: bool = False  # backend="auto" chose OpenVINO: a graph it refuses falls back to ONNX Runtime
    engine_precisions: dict = field(default_factory=dict)  # graph -> the precision of its engine
    threads: int | None = None  # ONNX Runtime intra-op / OpenVINO inference threads (None: the backend's default)
    cuda_device: int = 0  # the CUDA device ONNX Runtime's CUDA provider runs on


def parse_device(device: object) -> tuple[str, int]:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` -> (kind, CUDA device index)."""
    if isinstance(device, str) and device in ("auto", "cpu", "cuda"):
        return device, 0
    if isinstance(device, str) and device.startswith("cuda:"):
        index = device[5:]
        if index.isascii() and index.isdigit() and len(index) <= 3:
            return "cuda", int(index)
    raise RadaError(f"unknown device {device!r}", "use 'auto', 'cpu', 'cuda' or 'cuda:N' (N: the GPU's index, e.g. cuda:1)",
                    field="device")


def check_threads(threads: object) -> int | None:
    """None (the backend's default) or a thread count from 1 to 1024."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 1024:
        raise RadaError(f"threads must be a whole number from 1 to 1024, or None, got {threads!r}",
                        "pass threads=None for the backend's default, or the cores inference may use (e.g. threads=2)",
                        field="threads")
    return threads


def choose_backend(bundle: Path, manifest: Manifest, backend: str, device: str, precision: str,
                   threads: int | None = None) -> BackendChoice:
    """Which backend each graph runs on (`auto`, or an explicit request), and why.

    ``precision``: the requested one. ``auto`` (the default) takes, per graph, the best TensorRT
    engine that fits (engine_selection.select_engines: INT8 where its parity passed, then FP16, then
    FP32), and runs the graphs without one on ONNX Runtime in FP32, which OpenVINO computes in bf16
    where the CPU does so natively. ``device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``;
    ``threads``: ONNX Runtime's intra-op threads and OpenVINO's inference threads (None: their default).
    """
    if backend not in BACKENDS:
        raise RadaError(f"unknown backend {backend!r}", f"use one of {', '.join(BACKENDS)}", field="backend")
    device, cuda_device = parse_device(device)
    threads = check_threads(threads)
    choice = _choose(bundle, manifest, backend, device, cuda_device, precision)
    return replace(choice, threads=threads, cuda_device=cuda_device,
                   openvino=replace(choice.openvino, threads=threads) if choice.openvino is not None else None)


def _choose(bundle: Path, manifest: Manifest, backend: str, device: str, cuda_device: int, precision: str) -> BackendChoice:
    if backend == OPENVINO:
        if device == "cuda":
            raise RadaError("the OpenVINO backend runs on the CPU, and device 'cuda' was asked for",
                            "use device='cpu' (or 'auto') with OpenVINO, or backend='onnxruntime' or 'tensorrt' on the GPU",
                            field="device")
        plan = plan_openvino(precision, bundle)
        return BackendChoice(OPENVINO, plan.describe(), openvino=plan)
    placements = {}
    if backend in ("auto", "tensorrt") and device != "cpu":
        if cuda_device != 0:
            # Engines are selected and loaded for the first GPU (trt_environment, tensorrt_engine).
            if backend == "tensorrt":
                raise RadaError(f"the TensorRT backend runs on GPU 0 only, and cuda:{cuda_device} was asked for",
                                "use device='cuda' (GPU 0) with TensorRT, or backend='onnxruntime' on another GPU",
                                field="device")
            placements = {}
        else:
            placements = _placements(bundle, manifest, precision)
        engines = {g: p.engine for g, p in placements.items() if p.backend == "tensorrt"}
        if backend == "tensorrt" and not engines:
            problem = "; ".join(f"{g}: {p.reason}" for g, p in placements.items())
            raise RadaError(f"cannot use the TensorRT backend: {problem}",
                            "build an engine with `rada-export trt --bundle ...` on this device, or use backend='onnxruntime'")
        if not engines and (bundle / "engines").is_dir():  # engines were built, yet none fits: worth saying
            first = next(iter(placements.values()), None)
            why = f"engines run on GPU 0, and cuda:{cuda_device} was asked for" if cuda_device else \
                first.reason if first else "no engine fits"
            warnings.warn(f"TensorRT not used: {why}", stacklevel=4)  # the caller of load_bundle
    else:
        engines = {}
    cpu_note = ""
    if backend == "auto" and not engines and device != "cuda":
        providers = _providers_if_any()
        if device == "cpu" or "CUDAExecutionProvider" not in providers:
            openvino, cpu_note = _auto_openvino(bundle, precision, device)
            if openvino is not None:
                return openvino
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available_providers():
        ort, ort_label, alone = "onnxruntime-cuda", "ONNX Runtime CUDA", "ONNX Runtime with the CUDA execution provider"
        if cuda_device:
            ort_label, alone = f"{ort_label} (GPU {cuda_device})", f"{alone} on GPU {cuda_device}"
    elif device == "cuda":
        raise RadaError("ONNX Runtime has no CUDA execution provider here",
                        "pip install 'rada-export[gpu]' (onnxruntime-gpu), or use device='cpu'", field="device")
    else:
        ort, ort_label = "onnxruntime-cpu", "ONNX Runtime CPU"
        alone = "ONNX Runtime on the CPU" + (" (no GPU backend available)" if device == "auto" else "") + cpu_note
    if not engines:
        return BackendChoice(ort, alone, ort)
    from .engine_selection import describe_placements

    return BackendChoice(f"tensorrt+{ort}", describe_placements(placements, ort_label), ort, engines,
                         engine_precisions={g: placements[g].precision for g in engines})


def _providers_if_any() -> list[str]:
    """ONNX Runtime's execution providers, or none where it is not installed (OpenVINO may serve alone)."""
    try:
        return available_providers()
    except RadaError:
        return []


def _auto_openvino(bundle: Path, precision: str, device: str) -> tuple[BackendChoice | None, str]:
    """``auto`` on the CPU: OpenVINO where it is installed and loads; else why not, for the description."""
    if not openvino_installed():
        return None, f"; OpenVINO, faster on CPUs, is not installed ({OPENVINO_INSTALL})"
    try:
        cpu_info()
    except RadaError as err:
        return None, f"; OpenVINO is installed but does not load ({err.problem})"
    plan = plan_openvino(precision, bundle)
    where = "device 'cpu'" if device == "cpu" else "no usable TensorRT engine or CUDA here"
    reason = f"{plan.describe()}; backend 'auto' picked OpenVINO: {where}, and OpenVINO is installed"
    return BackendChoice(OPENVINO, reason, openvino=plan, picked_by_auto=True), ""


def _placements(bundle: Path, manifest: Manifest, precision: str) -> dict:
    from .engine_layout import scan_engines
    from .engine_selection import select_engines

    try:
        engines = scan_engines(bundle)
    except (ValueError, RecursionError) as err:
        # engines/*/*.json is not covered by the manifest's checksums: a description Python's json
        # cannot take (an integer of thousands of digits, deep nesting) leaves TensorRT unused.
        return select_engines(manifest, {}, None, precision, f"an engine description in {bundle / 'engines'} is unreadable "
                              f"({type(err).__name__}: {str(err).splitlines()[0][:100] if str(err) else ''})")
    if not engines:
        return select_engines(manifest, {}, None, precision, f"no engines in {bundle / 'engines'}")
    try:
        from .trt_environment import current_engine_environment

        current, unavailable = current_engine_environment(), None
    except RadaError as err:
        current, unavailable = None, f"TensorRT cannot run here ({err.problem.splitlines()[0]})"
    return select_engines(manifest, engines, current, precision, unavailable)


def make_runner(choice: BackendChoice, bundle: Path, manifest: Manifest, graph: str, precision: str) -> GraphRunner:
    """The runner of ``graph`` in ``precision``. ``bundle``: a VerifiedBundle (graphs from verified
    bytes) or a folder (graphs opened from their paths, for tools that checked the files themselves)."""
    engine = choice.engines.get(graph)
    if engine is not None:
        return TrtRunner(Path(bundle) / engine, manifest)
    if choice.name == "tensorrt":  # an explicit TensorRT-only choice (rada-export bench): this graph's engine or an error
        from .engine_selection import find_engine

        path = find_engine(Path(bundle), graph, precision)
        if path is None:
            raise RadaError(f"no {graph}.{precision} engine for this GPU in {bundle / 'engines'}",
                            f"run `rada-export trt --bundle {bundle} --graph {graph} --precision {precision}` on this device")
        return TrtRunner(path, manifest)
    if choice.openvino is not None:
        return _openvino_runner(choice, bundle, manifest, graph, precision)
    entry = manifest.graph(graph, precision)
    ort = choice.onnxruntime or choice.name
    return ort_runner(bundle, entry, "cuda" if ort == "onnxruntime-cuda" else "cpu", choice.threads, choice.cuda_device)


def ort_runner(bundle: Path | VerifiedBundle, entry: GraphEntry, device: str, threads: int | None = None,
               device_id: int = 0) -> OrtRunner:
    """An ONNX Runtime runner, from verified bytes where ``bundle`` is a VerifiedBundle.

    An ONNX Runtime too old to take external data from memory (before 1.19) opens the graph from its
    path instead, and the files at the path must be the very files pinned at load (same inodes)
    before and after the session reads them: a replaced bundle is then refused, not run.
    """
    path = Path(bundle) / entry.file
    settings = {"threads": threads, "device_id": device_id}
    if not isinstance(bundle, VerifiedBundle):
        return OrtRunner(path, device, entry.precision, **settings)
    model, external = bundle.graph_bytes(entry.file)  # hashed here: the bytes verified are the bytes run
    if not external or in_memory_external_data():
        return OrtRunner(path, device, entry.precision, model=model, external_data=external, **settings)
    rels = [entry.file] + [(Path(entry.file).parent / loc).as_posix() for loc in external]
    runner = OrtRunner(path, device, entry.precision, **settings) if bundle.still_pinned(rels) else None
    if runner is None or not bundle.still_pinned(rels):
        raise bundle_changed(bundle)
    return runner


def bundle_changed(bundle: VerifiedBundle) -> RadaError:
    return RadaError(f"bundle {bundle.path} was replaced after it was loaded, and this graph could not be read from "
                     "the files that were verified", "load the bundle again (load_bundle) to use the new one")


def _openvino_runner(choice: BackendChoice, bundle: Path, manifest: Manifest, graph: str, precision: str) -> GraphRunner:
    from .openvino_backend import OpenVinoRefusal, OpenVinoRunner, cache_folder, probe_feeds

    plan = choice.openvino
    variant = plan.graph_variant(precision)
    if manifest.graph_key(graph, variant) not in manifest.graphs:  # a packed bundle without the FP32 graph
        variant = precision
    entry = manifest.graph(graph, variant)
    cache = cache_folder(plan.cache_root, manifest, entry, plan.cpu.version) if plan.cache_root else None
    probe = probe_feeds(manifest, entry) if entry.precision == "int8" else None
    try:
        return OpenVinoRunner(Path(bundle) / entry.file, entry, plan, cache, probe, source=bundle)
    except OpenVinoRefusal as err:
        if not choice.picked_by_auto:
            raise
        # Chosen by `auto`, not by the user: a graph OpenVINO cannot take still runs, on ONNX Runtime.
        warnings.warn(f"{err.problem}; ONNX Runtime runs the {graph} graph instead", stacklevel=3)
        return ort_runner(bundle, manifest.graph(graph, precision), "cpu", choice.threads)
