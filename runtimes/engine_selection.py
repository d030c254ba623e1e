"""Which graph of a bundle runs on which TensorRT engine, and which falls back to ONNX Runtime, and why.

:func:`select_engines` is a pure function of the manifest, the engines folder's descriptions and
this device; :func:`find_engine` looks up one engine for the TensorRT and GPU found here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from rada_export.errors import RadaError

from .engine_layout import EngineEnvironment, check_engine_compat, engine_file_name, engine_path, read_engine_meta
from .trt_environment import current_engine_environment


def find_engine(
    bundle: str | os.PathLike, graph: str = "model", precision: str = "fp16", environment: EngineEnvironment | None = None,
) -> Path | None:
    """The bundle's engine for this GPU and TensorRT version, or None (also when TensorRT or a GPU is missing)."""
    if environment is None:
        try:
            environment = current_engine_environment()
        except RadaError:
            return None
    path = engine_path(bundle, graph, precision, environment)
    if not path.is_file():
        return None
    try:
        check_engine_compat(read_engine_meta(path), environment, path)
    except RadaError:
        return None
    return path


@dataclass(frozen=True)
class Placement:
    """Where one graph runs: a TensorRT engine (``engine``, relative to the bundle) or ONNX Runtime."""

    graph: str
    backend: str  # "tensorrt" or "onnxruntime"
    precision: str
    reason: str
    engine: str | None = None


def _engine_problem(meta: Mapping[str, Any] | None, manifest: Any, current: EngineEnvironment,
                    trusted: Callable[[str], bool] | None = None) -> str | None:
    if meta is None:
        return "its description (.json) is missing or unreadable"
    built = (str(meta.get("tensorrt_version")), str(meta.get("gpu_name")), str(meta.get("compute_capability")))
    if built != (current.tensorrt_version, current.gpu_name, current.compute_capability):
        return f"built with TensorRT {built[0]} on {built[1]} (sm {built[2]})"
    expected = (getattr(manifest, "files", {}) or {}).get(str(meta.get("onnx_file")))
    if not expected or expected != meta.get("onnx_sha256"):
        return f"built from another version of {meta.get('onnx_file')}"
    verification = meta.get("verification")
    if isinstance(verification, Mapping) and verification.get("passed") is False:
        return "it failed the parity check when it was built"
    if trusted is not None and not trusted(str(meta.get("engine_sha256") or "")):
        return "it was not built on this device by `rada-export trt` (an engine is executable code; one that came with a bundle is not loaded)"
    return None


# precision="auto": per graph, the first of these with an engine that fits. An INT8 engine exists
# only because it was built on purpose, and it is taken only where its parity check passed (an INT8
# engine whose parity was not checked may hide a calibration that went wrong); FP16 keeps LayerNorm,
# Softmax and the norms in FP32 in the graph itself, so an FP16 engine beats FP32 where no INT8 one is.
AUTO_ORDER = ("int8", "fp16", "fp32")


def _wanted(manifest: Any, graph: str, precision: str) -> list[str]:
    """The engine precisions that may serve ``graph`` for a request of ``precision``, best first."""
    if precision == "auto":
        return list(AUTO_ORDER)
    has_variant = manifest.graph_key(graph, precision) in (getattr(manifest, "graphs", {}) or {})
    return [precision] if has_variant or precision == "fp32" else [precision, "fp32"]


def select_engines(
    manifest: Any,
    engines: Mapping[str, Mapping[str, Any] | None],
    current: EngineEnvironment | None,
    precision: str = "auto",
    unavailable: str | None = None,
    trusted: Callable[[str], bool] | None = None,
) -> dict[str, Placement]:
    """Per graph of the bundle: the engine to run it with, or ONNX Runtime, and why. A pure function.

    ``engines`` is :func:`scan_engines`' answer (engine path -> description), ``current`` the GPU and
    TensorRT version here (None when TensorRT cannot run: ``unavailable`` says why). An engine fits
    when it was built on this GPU with this TensorRT version, from this bundle's ONNX file (same
    sha256), and did not fail parity; with ``trusted`` (engine sha256 -> bool, the runtime passes
    :func:`~rada_export.runtimes.engine_layout.is_trusted_engine`), only engines it accepts: those this
    device built. Without it, trust is left to the load (:class:`~rada_export.runtimes.tensorrt_engine.TensorRTEngine`).

    ``precision="auto"``: per graph, the best engine that fits in the order of :data:`AUTO_ORDER`
    (INT8 only where its parity check passed, then FP16, then FP32), else ONNX Runtime in FP32.
    ``fp32`` / ``fp16`` / ``int8``: an engine in that precision, or in FP32 for graphs that the bundle
    has no ``precision`` variant of (text encoder, head), else ONNX Runtime in that precision.
    """
    graphs = getattr(manifest, "graphs", {}) or {}
    # A packed device bundle may hold a graph in FP16 or INT8 only: every graph it names counts.
    base_graphs = list(dict.fromkeys(key.partition(".")[0] for key in graphs))
    placements: dict[str, Placement] = {}
    for graph in base_graphs:
        wanted = _wanted(manifest, graph, precision)
        ort_precision = _onnxruntime_precision(manifest, graphs, graph, precision)
        if current is None:
            placements[graph] = Placement(graph, "onnxruntime", ort_precision, unavailable or "TensorRT is not available here")
            continue
        rejected: list[str] = []
        chosen: tuple[str, Mapping[str, Any]] | None = None
        for want in wanted:
            for rel, meta in sorted(engines.items()):
                name = Path(rel).name
                if meta is not None and (meta.get("graph") != graph or meta.get("precision") != want):
                    continue
                if meta is None and name != engine_file_name(graph, want):
                    continue
                problem = _engine_problem(meta, manifest, current, trusted)
                if problem is None and precision == "auto" and want == "int8" and not _parity_passed(meta):
                    problem = "precision auto takes an INT8 engine only where its parity check passed (this one was not checked)"
                if problem is None:
                    chosen = (rel, meta)
                    break
                rejected.append(f"{rel}: {problem}")
            if chosen:
                break
        if chosen is not None:
            rel, meta = chosen
            note = "" if _parity_passed(meta) else ", parity not checked"
            placements[graph] = Placement(graph, "tensorrt", str(meta.get("precision")), f"TensorRT engine {rel}{note}", rel)
        else:
            why = "; ".join(rejected[:3]) if rejected else f"no {'/'.join(wanted)} {graph} engine for {current.dir_name}"
            placements[graph] = Placement(graph, "onnxruntime", ort_precision, why)
    return placements


def _onnxruntime_precision(manifest: Any, graphs: Mapping[str, Any], graph: str, precision: str) -> str:
    """The variant ONNX Runtime runs for ``graph`` without an engine: the one asked for where the bundle
    has it, else FP32, else (a packed bundle without FP32) the first variant it has."""
    if precision != "auto" and manifest.graph_key(graph, precision) in graphs:
        return precision
    if graph in graphs:
        return "fp32"
    return next((p for p in ("fp16", "int8") if manifest.graph_key(graph, p) in graphs), "fp32")


def _parity_passed(meta: Mapping[str, Any]) -> bool:
    verification = meta.get("verification")
    return isinstance(verification, Mapping) and verification.get("passed") is True


# The graphs the runtime runs, and what runs them (runtimes/runtime.py): the head is computed on the host.
RUNTIME_GRAPHS = ("model", "image_encoder", "text_encoder")
RUNTIME_PATHS = {
    "model": "predict on the bundle's classes",
    "image_encoder": "test-time adaptation (continual and episodic) and predict after set_classes",
    "text_encoder": "set_classes (new class names on the device)",
}


def paths_without_engine(placements: Mapping[str, Placement]) -> list[str]:
    """One line per runtime path whose graph runs on ONNX Runtime although TensorRT is here, and why."""
    lines = []
    for graph in RUNTIME_GRAPHS:
        placement = placements.get(graph)
        if placement is not None and placement.backend != "tensorrt":
            lines.append(f"{RUNTIME_PATHS[graph]} runs the {graph} graph on ONNX Runtime, not TensorRT: {placement.reason} "
                         f"(build it with `rada-export trt --graph {graph}`)")
    return lines


def describe_placements(placements: Mapping[str, Placement], onnxruntime: str) -> str:
    """'model: TensorRT (engines/.../model.fp16.engine); image_encoder, text_encoder, head: ONNX Runtime CPU'."""
    groups: dict[str, list[str]] = {}
    for graph, placement in placements.items():
        label = f"TensorRT {placement.precision} ({placement.engine})" if placement.backend == "tensorrt" else onnxruntime
        groups.setdefault(label, []).append(graph)
    return "; ".join(f"{', '.join(graphs)}: {label}" for label, graphs in groups.items())
