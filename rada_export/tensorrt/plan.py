"""A TensorRT build request, and its check against the bundle: the plan. Needs neither TensorRT nor a GPU.

:class:`BuildRequest` is what a user asks for (``rada-export trt`` builds one from its options);
:func:`plan_build` checks it against the bundle's manifest and turns it into a :class:`BuildPlan`:
the ONNX file to parse, the optimisation profile's ranges per symbolic dimension, and the options.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rada_export import __version__
from rada_export.errors import RadaError
from rada_export.runtimes.engine_layout import ENGINES_DIR, META_FORMAT, engine_file_name
from rada_export.runtimes.manifest import FUSED, GRAPH_NAMES, IMAGE_ENCODER, GraphEntry, Manifest, read_manifest

from .dla import DLA_INT8_FIX, DLA_INT8_PROBLEM, is_jetson

PRECISIONS = ("fp16", "int8", "fp32")
VARIANT_GRAPHS = (FUSED, IMAGE_ENCODER)  # graphs that get .fp16 / .int8 variants
# TensorRT tunes its kernels for the profile's opt shape: a camera app runs batch 1, so that is what
# a default build is fastest at; other batches within min..max still run (--opt-batch for batch work).
DEFAULT_OPT_BATCH = 1
DEFAULT_MAX_CLASSES = 256  # head engines: K up to this (or the bundle's K when larger)
DEFAULT_MAX_TEXTS = 256  # text-encoder engines: prompts per call up to this (or K x templates)
MAX_FRAMES_BATCH = 4  # default max batch of a frames graph (uint8 frames of any size in)


@dataclass
class BuildRequest:
    """One engine to build: which graph of which bundle, in which precision, for which shapes, with which options.

    None leaves a choice to the bundle (max batch, max classes/texts), to TensorRT (workspace) or to
    the precision (TF32: off for fp32 engines, on otherwise).
    """

    bundle: Path
    graph: str = FUSED
    precision: str = "fp16"
    min_batch: int = 1
    opt_batch: int | None = None  # default 1 (a camera's batch), within min..max
    max_batch: int | None = None  # default: the bundle's max_batch (4 for a frames graph)
    workspace_gb: float | None = None
    timing_cache: Path | None = None  # read if present, updated after the build
    dla_core: int | None = None  # Jetson AGX Orin / Orin NX; fixed batch
    gpu_fallback: bool = False  # with dla_core: layers the DLA cannot take run on the GPU
    tf32: bool | None = None
    max_classes: int | None = None  # head engines: most classes per call
    max_texts: int | None = None  # text-encoder engines: most prompts per call
    calib_images: Path | None = None  # INT8 without a Q/DQ graph yet: calibrate on these first
    verify: bool = True  # parity against ONNX Runtime FP32 after the build
    seed: int = 0  # of the parity check's inputs


@dataclass
class BuildPlan:
    """A checked build request: which file, which profile, which options. Made without TensorRT."""

    bundle: Path
    manifest: Manifest
    graph: str
    precision: str
    entry: GraphEntry | None  # None: an INT8 graph still to be calibrated (calib_images)
    ranges: dict[str, tuple[int, int, int]]  # symbolic dim -> (min, opt, max)
    workspace_bytes: int | None = None
    timing_cache: Path | None = None
    dla_core: int | None = None
    gpu_fallback: bool = False
    tf32: bool = False
    calib_images: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def needs_calibration(self) -> bool:
        return self.entry is None

    @property
    def onnx_path(self) -> Path:
        if self.entry is None:
            raise RadaError(f"the bundle has no INT8 {self.graph} graph yet", "calibrate first")
        return self.bundle / self.entry.file

    @property
    def batch(self) -> tuple[int, int, int]:
        return self.ranges["batch"]

    def input_profile(self, name: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) shapes of one input, from the manifest's symbolic dims."""
        entry = self.entry or self.manifest.graphs[self.graph]
        if name not in entry.inputs:
            raise RadaError(f"the graph has an input {name!r} that the manifest does not list ({sorted(entry.inputs)})",
                            "re-export the bundle")
        shapes: list[list[int]] = [[], [], []]
        for dim in entry.inputs[name]:
            if isinstance(dim, str):
                if dim not in self.ranges:
                    raise RadaError(f"input {name!r} has a dynamic dimension {dim!r} that rada-export has no range for",
                                    "re-export the bundle with this rada-export")
                values = self.ranges[dim]
            elif int(dim) > 0:
                values = (int(dim),) * 3
            else:
                raise RadaError(f"input {name!r} has an unnamed dynamic dimension", "re-export the bundle with this rada-export")
            for shape, value in zip(shapes, values):
                shape.append(int(value))
        return tuple(shapes[0]), tuple(shapes[1]), tuple(shapes[2])


    @property
    def engine_file(self) -> str:
        return engine_file_name(self.graph, self.precision)

    def profiles(self) -> dict[str, dict[str, list[int]]]:
        """(min, opt, max) shapes of every input of the graph, as the engine's JSON records them."""
        entry = self.entry or self.manifest.graphs[self.graph]
        shapes = {}
        for name in entry.inputs:
            low, opt, high = self.input_profile(name)
            shapes[name] = {"min": list(low), "opt": list(opt), "max": list(high)}
        return shapes

    def planned_meta(self) -> dict[str, Any]:
        """The engine's JSON as far as the plan decides it; the build fills in the rest (None here)."""
        entry = self.entry
        key = self.manifest.engine_graph_key(self.graph, self.precision)
        return {
            "format": META_FORMAT, "graph": self.graph, "precision": self.precision, "engine_file": self.engine_file,
            "engine_size": None, "engine_sha256": None,
            "onnx_file": entry.file if entry is not None else f"{key}.onnx (made by calibration)",
            "onnx_sha256": self.manifest.files.get(entry.file) if entry is not None else None,
            "external_data": entry.external_data if entry is not None else None,
            "tensorrt_version": None, "gpu_name": None, "compute_capability": None, "cuda_runtime": None,
            "dla_core": self.dla_core,
            "profiles": [self.profiles()],
            # inputs whose first axis holds independent rows: the runtime splits larger batches on them
            "batch_inputs": [n for n, dims in (entry or self.manifest.graphs[self.graph]).inputs.items()
                             if dims and dims[0] in ("batch", "num_texts")],
            "build_flags": None, "build_seconds": None, "built_at": None,
            "bundle_model": self.manifest.model, "bundle_pretrained": self.manifest.pretrained,
            "num_classes": len(self.manifest.class_names), "opset": self.manifest.opset, "rada_export_version": __version__,
        }


def _whole_number(value: Any, name: str) -> int:
    """``value`` as an int (8, 8.0, "8"), or a RadaError about the request field ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            if float(value) != int(value):
                raise ValueError
            value = int(value)
        except (TypeError, ValueError):
            raise RadaError(f"{name} must be a whole number, got {value!r}", f"pass e.g. {name}=8", field=name) from None
    return int(value)


def _one_of(name: str, values: tuple[str, ...]) -> str:
    """``name='a', name='b' or name='c'``: each choice as a keyword, which the CLI shows as its flag."""
    choices = [f"{name}={value!r}" for value in values]
    return ", ".join(choices[:-1]) + f" or {choices[-1]}"


def _missing_variant(manifest: Manifest, graph: str, precision: str, bundle: Path, calib_images: Path | None) -> RadaError | None:
    have = ", ".join(sorted(manifest.graphs)) or "none"
    if graph not in manifest.graphs:
        return RadaError(f"the bundle has no {graph} graph (it has: {have})", "re-export the bundle with `rada-export onnx`")
    if precision == "fp32" or manifest.graph_key(graph, precision) in manifest.graphs:
        return None
    if graph not in VARIANT_GRAPHS:
        return RadaError(
            f"the bundle has no {precision.upper()} {graph} graph: {precision.upper()} variants are made for "
            f"{' and '.join(VARIANT_GRAPHS)} only (it has: {have})",
            f"build {graph} with precision='fp32' (it is small), or build {_one_of('graph', VARIANT_GRAPHS)}",
            field="precision",
        )
    if precision == "fp16":
        return RadaError(f"the bundle has no FP16 {graph} graph (it has: {have})",
                         "re-export with `rada-export onnx --fp16` (the FP16 graph carries its FP32 casts)", field="precision")
    if calib_images is None:
        return RadaError(
            f"the bundle has no INT8 (Q/DQ) {graph} graph (it has: {have})",
            f"calibrate first (`rada-export calibrate --bundle {bundle} --images DIR`), "
            "or pass calib_images='DIR', a folder of images, to calibrate on the way",
            field="precision",
        )
    return None


def plan_build(request: BuildRequest, *, jetson: Callable[[], bool] | None = None) -> BuildPlan:
    """Checks a build request against the bundle; needs neither TensorRT nor a GPU.

    ``jetson`` answers whether this is a Jetson (default :func:`is_jetson`); only ``dla_core`` asks.
    """
    req = request
    graph, precision = req.graph, req.precision
    if graph not in GRAPH_NAMES:
        raise RadaError(f"graph {graph!r} is unknown", f"use {_one_of('graph', GRAPH_NAMES)}", field="graph")
    if precision not in PRECISIONS:
        raise RadaError(f"precision {precision!r} is unknown", f"use {_one_of('precision', PRECISIONS)}", field="precision")
    if req.dla_core is not None and precision == "int8":
        raise RadaError(DLA_INT8_PROBLEM, DLA_INT8_FIX, field="dla_core")
    bundle = Path(req.bundle)
    if not bundle.exists():
        raise RadaError(f"bundle {bundle} does not exist", "pass the folder written by `rada-export onnx --out`", field="bundle")
    manifest = read_manifest(bundle)
    notes: list[str] = []

    calib = Path(req.calib_images) if req.calib_images is not None else None
    if calib is not None:
        if precision != "int8":
            raise RadaError(f"calib_images only applies to precision='int8', got precision={precision!r}",
                            "pass precision='int8' to calibrate, or build without calibration images", field="calib_images")
        if not calib.is_dir():
            raise RadaError(f"calib_images {calib} is not a folder", "pass a folder of calibration images (jpg/png/webp/bmp)",
                            field="calib_images")
    problem = _missing_variant(manifest, graph, precision, bundle, calib)
    if problem is not None:
        raise problem
    entry = manifest.graphs.get(manifest.engine_graph_key(graph, precision))
    if entry is not None and calib is not None:
        notes.append(f"the bundle already has an INT8 {graph} graph: the calibration images were not used "
                     "(run `rada-export calibrate` to make a new one)")
    if entry is not None and not (bundle / entry.file).is_file():
        raise RadaError(f"the bundle's {entry.file} is missing", "copy the bundle again in full, or re-export it")

    frames_graph = manifest.frames is not None and graph == FUSED
    ranges = {"batch": _batch_range(req, manifest, frames_graph, notes), **_text_ranges(req, manifest)}
    if frames_graph:
        # Frame height, width and channels from the manifest (fixed by `onnx --frame-size`, else any size).
        ranges.update(manifest.frames.ranges())

    if req.workspace_gb is not None and not float(req.workspace_gb) > 0:
        raise RadaError(f"workspace_gb must be a positive number of GB, got {req.workspace_gb}",
                        "pass e.g. workspace_gb=2, or leave it to TensorRT", field="workspace_gb")
    workspace = int(float(req.workspace_gb) * 2**30) if req.workspace_gb is not None else None

    cache = Path(req.timing_cache) if req.timing_cache is not None else None
    if cache is not None:
        if cache.exists() and not cache.is_file():
            raise RadaError(f"timing_cache {cache} is not a file", "pass a file path (it is created on the first build)",
                            field="timing_cache")
        if not cache.parent.is_dir():
            raise RadaError(f"timing_cache {cache} is in a folder that does not exist", "create the folder, or pass another path",
                            field="timing_cache")

    dla_core = _check_dla(req, ranges["batch"], jetson or is_jetson)
    if dla_core is not None:
        ranges = {dim: (opt, opt, opt) for dim, (_, opt, _) in ranges.items()}

    _check_writable(bundle)
    return BuildPlan(
        bundle=bundle, manifest=manifest, graph=graph, precision=precision, entry=entry, ranges=ranges,
        workspace_bytes=workspace, timing_cache=cache, dla_core=dla_core, gpu_fallback=req.gpu_fallback,
        tf32=(precision != "fp32") if req.tf32 is None else bool(req.tf32), calib_images=calib, notes=notes,
    )


def _batch_range(req: BuildRequest, manifest: Manifest, frames_graph: bool, notes: list[str]) -> tuple[int, int, int]:
    min_b = _whole_number(req.min_batch if req.min_batch is not None else 1, "min_batch")
    max_b = _whole_number(req.max_batch, "max_batch") if req.max_batch is not None else None
    opt_b = _whole_number(req.opt_batch, "opt_batch") if req.opt_batch is not None else None
    if req.dla_core is not None and opt_b is None and max_b is None:
        opt_b = max_b = min_b  # DLA runs fixed shapes: one batch size unless told otherwise
        notes.append(f"DLA: fixed batch {min_b} (pass min_batch=N, opt_batch=N and max_batch=N to change it)")
    if max_b is None:
        max_b = max(int(manifest.max_batch), min_b)
        if frames_graph:
            # The profile's max shape sizes the engine's activations: 32 float 4K frames are gigabytes.
            max_b = max(min(max_b, MAX_FRAMES_BATCH), min_b)
            notes.append(f"frames graph: max batch {max_b} by default (pass max_batch=N to change it)")
    if opt_b is None:
        opt_b = max(min_b, min(max_b, DEFAULT_OPT_BATCH))
    if min_b < 1:
        raise RadaError(f"min_batch must be at least 1, got {min_b}", "pass min_batch=1", field="min_batch")
    if not min_b <= opt_b <= max_b:
        raise RadaError(f"batch sizes must satisfy 1 <= min <= opt <= max, got min {min_b}, opt {opt_b}, max {max_b}",
                        "pass e.g. min_batch=1, opt_batch=8, max_batch=32")
    return min_b, opt_b, max_b


def _text_ranges(req: BuildRequest, manifest: Manifest) -> dict[str, tuple[int, int, int]]:
    """Profile ranges of the class count (head) and the prompt count (text encoder)."""
    num_classes = max(1, len(manifest.class_names))
    num_texts = num_classes * max(1, len(manifest.templates))
    max_k = _whole_number(req.max_classes, "max_classes") if req.max_classes is not None else max(num_classes, DEFAULT_MAX_CLASSES)
    max_t = _whole_number(req.max_texts, "max_texts") if req.max_texts is not None else max(num_texts, DEFAULT_MAX_TEXTS)
    for name, value in (("max_classes", max_k), ("max_texts", max_t)):
        if value < 1:
            raise RadaError(f"{name} must be at least 1, got {value}", f"pass e.g. {name}=256", field=name)
    return {"num_classes": (1, min(num_classes, max_k), max_k), "num_texts": (1, min(num_texts, max_t), max_t)}


def _check_dla(req: BuildRequest, batch: tuple[int, int, int], jetson: Callable[[], bool]) -> int | None:
    """The DLA core to build for (None: the GPU), after the checks that need no TensorRT."""
    if req.gpu_fallback and req.dla_core is None:
        raise RadaError("gpu_fallback=True only applies to a DLA build (dla_core=N)",
                        "pass dla_core=0 to build for the DLA, or build for the GPU without GPU fallback", field="gpu_fallback")
    if req.dla_core is None:
        return None
    dla_core = _whole_number(req.dla_core, "dla_core")
    if dla_core < 0:
        raise RadaError(f"dla_core must be 0 or more, got {dla_core}", "pass dla_core=0 (or 1 on AGX Orin)", field="dla_core")
    if req.precision == "fp32":
        raise RadaError("DLA runs FP16 and INT8 only", "pass precision='fp16' or precision='int8' for a DLA build", field="precision")
    if not jetson():
        raise RadaError(
            f"dla_core={dla_core} needs a Jetson with DLA cores "
            "(AGX Orin and Orin NX have them; Orin Nano and desktop GPUs do not)",
            "build for the GPU instead (no DLA core)", field="dla_core",
        )
    min_b, opt_b, max_b = batch
    if len({min_b, opt_b, max_b}) > 1:
        raise RadaError(f"DLA needs a fixed batch, got min {min_b}, opt {opt_b}, max {max_b}",
                        f"pass one batch size for all three: min_batch={opt_b}, opt_batch={opt_b}, max_batch={opt_b}")
    return dla_core


def _check_writable(bundle: Path) -> None:
    engines = bundle / ENGINES_DIR
    if engines.exists() and not engines.is_dir():
        raise RadaError(f"{engines} is a file; engines go into a folder of that name", f"move {engines} away")
    target = engines if engines.is_dir() else bundle
    try:
        fd, name = tempfile.mkstemp(dir=target, prefix=".rada-write-test-")
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        raise RadaError(f"cannot write engines into {target} ({err.strerror or err})",
                        "make the bundle folder writable, or copy the bundle to a writable place") from None
