"""Building TensorRT engines from a bundle's ONNX graphs (host side; runs on the target GPU or Jetson).

Precision comes from the graph itself, never from builder flags:

- FP16: the bundle's ``.fp16`` graph, whose casts keep LayerNorm, Softmax, the normalisations and
  the head in FP32;
- INT8: the bundle's ``.int8`` graph with explicit Q/DQ nodes (``rada-export calibrate``);
- FP32: the plain graph.

Each is parsed into a STRONGLY_TYPED network, so TensorRT builds exactly the types the graph holds,
except DLA engines on TensorRT 10.x (below, and :func:`dla_build_mode`).

TensorRT 10 vs 11, the code paths that differ:

- Network creation: ``STRONGLY_TYPED`` is opt-in on 10.x; on 11.x every network is strongly typed
  and the flag is accepted and ignored, so it is set whenever the enum has it, and 0 is passed on
  an 11.x that no longer has it (:func:`network_flags`). ``EXPLICIT_BATCH`` is never passed: 10.x
  ignores it (networks are always explicit batch) and 11.x removed it.
- Precision flags: ``BuilderFlag.FP16`` / ``INT8`` / ``BF16`` and weak typing were deprecated
  in 10.x (weak typing from 10.12) and removed in 11.x. They are used in one place only: DLA
  on 10.0-10.7 (JetPack 6.1/6.2 = 10.3), whose DLA takes FP16/INT8 only through these flags,
  which a strongly typed network rejects; strongly typed DLA arrived in 11.4.1. There the
  network is weakly typed with FP16 (and INT8) set, as ``trtexec --useDLACore=0 --fp16
  --allowGPUFallback`` does on 10.x.
- INT8 calibrators (``IInt8EntropyCalibrator2``, ``config.int8_calibrator``): deprecated in 10.1,
  removed in 11.x. Not used: INT8 is only the Q/DQ graph (explicit quantization).
- ``BuilderFlag.TF32`` exists on both and is on by default; FP32 builds clear it.
- DLA: ``DeviceType.DLA``, ``config.DLA_core``, ``BuilderFlag.GPU_FALLBACK`` and
  ``config.can_run_on_DLA(layer)`` (recorded per layer type in the engine's JSON as
  ``dla_gpu_layers``: the layers that run on the GPU) exist on 10.x; 10.8+ and 11.0-11.4.0 have
  no DLA on Jetson, so the release is checked before the build (:func:`dla_build_mode`).
- Unchanged between 10 and 11 and used as is (TensorRT Python API, "Builder", "NetworkConfig",
  "OnnxParser" pages of docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/):
  ``Builder``, ``OnnxParser.parse_from_file`` (a path,
  so external ``.onnx.data`` weights are found), ``set_memory_pool_limit(MemoryPoolType.WORKSPACE)``,
  ``create_optimization_profile``/``set_shape``, ``create_timing_cache``/``set_timing_cache``/
  ``get_timing_cache().serialize()``, ``build_serialized_network``.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.util
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rada_export import __version__
from rada_export.errors import RadaError, VerificationError
from rada_export.progress import SILENT, Reporter
from rada_export.runtimes import cuda_memory as cm
from rada_export.runtimes import tensorrt_engine as te
from rada_export.runtimes.manifest import FUSED, GRAPH_NAMES, IMAGE_ENCODER, GraphEntry, Manifest, read_manifest, verify_checksums

from .verify import EngineReport, thresholds_for, verify_engine

PRECISIONS = ("fp16", "int8", "fp32")
VARIANT_GRAPHS = (FUSED, IMAGE_ENCODER)  # graphs that get .fp16 / .int8 variants
DEFAULT_OPT_BATCH = 8
DEFAULT_MAX_CLASSES = 256  # head engines: K up to this (or the bundle's K when larger)
DEFAULT_MAX_TEXTS = 256
MAX_FRAMES_BATCH = 4  # default max batch of a frames graph (uint8 frames of any size in)  # text-encoder engines: prompts per call up to this (or K x templates)
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


@dataclass
class BuildPlan:
    """A checked build request: which file, which profile, which options. Made without TensorRT."""

    bundle: Path
    manifest: Manifest
    graph: str
    precision: str
    entry: GraphEntry | None  # None: an INT8 graph still to be calibrated (--calib-images)
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


def _int(value: Any, option: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            if float(value) != int(value):
                raise ValueError
            value = int(value)
        except (TypeError, ValueError):
            raise RadaError(f"{option} must be a whole number, got {value!r}", f"pass {option} 8, for example") from None
    return int(value)


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
            f"build {graph} with --precision fp32 (it is small), or build --graph model / image_encoder",
        )
    if precision == "fp16":
        return RadaError(f"the bundle has no FP16 {graph} graph (it has: {have})",
                         "re-export with `rada-export onnx --fp16` (the FP16 graph carries its FP32 casts)")
    if calib_images is None:
        return RadaError(
            f"the bundle has no INT8 (Q/DQ) {graph} graph (it has: {have})",
            f"calibrate first: rada-export calibrate --bundle {bundle} --images DIR, "
            "or pass --calib-images DIR to this command to calibrate on the way",
        )
    return None


def plan_build(
    bundle: str | os.PathLike,
    graph: str = FUSED,
    precision: str = "fp16",
    min_batch: int = 1,
    opt_batch: int | None = None,
    max_batch: int | None = None,
    workspace_gb: float | None = None,
    timing_cache: str | os.PathLike | None = None,
    dla_core: int | None = None,
    gpu_fallback: bool = False,
    *,
    tf32: bool | None = None,
    max_classes: int | None = None,
    max_texts: int | None = None,
    calib_images: str | os.PathLike | None = None,
    jetson: Callable[[], bool] | None = None,
) -> BuildPlan:
    """Checks a build request against the bundle; needs neither TensorRT nor a GPU."""
    if graph not in GRAPH_NAMES:
        raise RadaError(f"unknown graph {graph!r}", f"use --graph {' | '.join(GRAPH_NAMES)}")
    if precision not in PRECISIONS:
        raise RadaError(f"unknown precision {precision!r}", f"use --precision {' | '.join(PRECISIONS)}")
    bundle = Path(bundle)
    if not bundle.exists():
        raise RadaError(f"bundle {bundle} does not exist", "pass the folder written by `rada-export onnx --out`")
    manifest = read_manifest(bundle)
    notes: list[str] = []

    calib = Path(calib_images) if calib_images is not None else None
    if calib is not None:
        if precision != "int8":
            raise RadaError("--calib-images only applies to --precision int8", "drop --calib-images, or pass --precision int8")
        if not calib.is_dir():
            raise RadaError(f"--calib-images {calib} is not a folder", "pass a folder of calibration images (jpg/png/webp/bmp)")
    problem = _missing_variant(manifest, graph, precision, bundle, calib)
    if problem is not None:
        raise problem
    key = manifest.engine_graph_key(graph, precision)
    entry = manifest.graphs.get(key)
    if entry is not None and calib is not None:
        notes.append(f"the bundle already has an INT8 {graph} graph: --calib-images was not used "
                     "(run `rada-export calibrate` to make a new one)")
    if entry is not None and not (bundle / entry.file).is_file():
        raise RadaError(f"the bundle's {entry.file} is missing", "copy the bundle again in full, or re-export it")

    # Batch range.
    min_b = _int(min_batch if min_batch is not None else 1, "--min-batch")
    max_b = _int(max_batch, "--max-batch") if max_batch is not None else None
    opt_b = _int(opt_batch, "--opt-batch") if opt_batch is not None else None
    if dla_core is not None and opt_b is None and max_b is None:
        opt_b = max_b = min_b  # DLA runs fixed shapes: one batch size unless told otherwise
        notes.append(f"DLA: fixed batch {min_b} (pass --min-batch/--opt-batch/--max-batch N to change it)")
    frames_graph = manifest.frames is not None and graph == FUSED
    if max_b is None:
        max_b = max(int(manifest.max_batch), min_b)
        if frames_graph:
            # The profile's max shape sizes the engine's activations: 32 float 4K frames are gigabytes.
            max_b = max(min(max_b, MAX_FRAMES_BATCH), min_b)
            notes.append(f"frames graph: max batch {max_b} by default (pass --max-batch N to change it)")
    if opt_b is None:
        opt_b = _clamp(DEFAULT_OPT_BATCH, min_b, max_b)
    if min_b < 1:
        raise RadaError(f"--min-batch must be at least 1, got {min_b}", "pass --min-batch 1")
    if not min_b <= opt_b <= max_b:
        raise RadaError(f"batch sizes must satisfy 1 <= min <= opt <= max, got min {min_b}, opt {opt_b}, max {max_b}",
                        "pass e.g. --min-batch 1 --opt-batch 8 --max-batch 32")

    num_classes = max(1, len(manifest.class_names))
    num_texts = num_classes * max(1, len(manifest.templates))
    max_k = _int(max_classes, "--max-classes") if max_classes is not None else max(num_classes, DEFAULT_MAX_CLASSES)
    max_t = _int(max_texts, "--max-texts") if max_texts is not None else max(num_texts, DEFAULT_MAX_TEXTS)
    if max_k < 1 or max_t < 1:
        raise RadaError("--max-classes and --max-texts must be at least 1", "pass e.g. --max-classes 256")
    ranges = {
        "batch": (min_b, opt_b, max_b),
        "num_classes": (1, min(num_classes, max_k), max_k),
        "num_texts": (1, min(num_texts, max_t), max_t),
    }
    if frames_graph:
        # Frame height, width and channels from the manifest (fixed by `onnx --frame-size`, else any size).
        ranges.update(manifest.frames.ranges())

    if workspace_gb is not None and not float(workspace_gb) > 0:
        raise RadaError(f"--workspace must be a positive number of GB, got {workspace_gb}", "pass e.g. --workspace 2, or leave it out")
    workspace = int(float(workspace_gb) * 2**30) if workspace_gb is not None else None

    cache = Path(timing_cache) if timing_cache is not None else None
    if cache is not None:
        if cache.exists() and not cache.is_file():
            raise RadaError(f"--timing-cache {cache} is not a file", "pass a file path (it is created on the first build)")
        if not cache.parent.is_dir():
            raise RadaError(f"the folder of --timing-cache {cache} does not exist", "create it, or pass another path")

    if gpu_fallback and dla_core is None:
        raise RadaError("--gpu-fallback only applies with --dla-core N", "add --dla-core 0, or drop --gpu-fallback")
    if dla_core is not None:
        dla_core = _int(dla_core, "--dla-core")
        if dla_core < 0:
            raise RadaError(f"--dla-core must be 0 or more, got {dla_core}", "pass --dla-core 0 (or 1 on AGX Orin)")
        if precision == "fp32":
            raise RadaError("DLA runs FP16 and INT8 only", "pass --precision fp16 (or int8) with --dla-core")
        if not (jetson or is_jetson)():
            raise RadaError(
                "--dla-core needs a Jetson with DLA cores (AGX Orin and Orin NX have them; Orin Nano and desktop GPUs do not)",
                "drop --dla-core to build for the GPU",
            )
        if len({min_b, opt_b, max_b}) > 1:
            raise RadaError(f"DLA needs a fixed batch, got min {min_b}, opt {opt_b}, max {max_b}",
                            "pass the same value to --min-batch, --opt-batch and --max-batch")
        ranges = {dim: (opt, opt, opt) for dim, (_, opt, _) in ranges.items()}

    _check_writable(bundle)
    return BuildPlan(
        bundle=bundle, manifest=manifest, graph=graph, precision=precision, entry=entry, ranges=ranges,
        workspace_bytes=workspace, timing_cache=cache, dla_core=dla_core, gpu_fallback=gpu_fallback,
        tf32=(precision != "fp32") if tf32 is None else bool(tf32), calib_images=calib, notes=notes,
    )


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def _check_writable(bundle: Path) -> None:
    engines = bundle / te.ENGINES_DIR
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


def verify_sources(plan: BuildPlan) -> str:
    """Checks the ONNX file (and its external data) against the manifest's sha256; returns the file's sha256."""
    entry = plan.entry
    files = [entry.file] + ([entry.external_data] if entry.external_data else [])
    unlisted = [f for f in files if f not in plan.manifest.files]
    if unlisted:
        raise RadaError(f"the manifest has no checksum for {', '.join(unlisted)}",
                        "re-export (or re-calibrate) the bundle so that every graph is checksummed")
    verify_checksums(plan.bundle, plan.manifest, only=files)
    return plan.manifest.files[entry.file]


def check_graph_ops(plan: BuildPlan, trt_version: str | None, notes: list[str]):
    """The lint of the graph to build (rada_export.tensorrt.lint); raises with one line per finding.

    ``trt_version`` None (before TensorRT is loaded): the newest release the operator list knows,
    so nothing a newer TensorRT takes is refused early; then again with the installed version.
    """
    from .lint import lint_model
    from .ops import load_supported_ops

    if importlib.util.find_spec("onnx") is None:
        notes.append("static check skipped: the onnx package is not installed")
        return None
    supported = load_supported_ops()
    version = trt_version or ".".join(map(str, supported.newest_known))
    findings = lint_model(plan.onnx_path, plan.manifest.engine_graph_key(plan.graph, plan.precision), version,
                          manifest_inputs=plan.entry.inputs if plan.entry else None)
    if findings:
        raise RadaError(
            f"TensorRT {version} cannot parse {plan.entry.file}:" + "".join(f"\n  - {f.line()}" for f in findings[:20]),
            f"re-export the bundle with this rada-export; `rada-export trt --bundle {plan.bundle} --check` lists every finding",
        )
    return findings


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
    version = te.parse_version(trt_version)
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


def check_prerequisites(
    plan: BuildPlan, verify: bool, environment: te.TensorRTEnvironment | None = None,
    diagnose: Callable[[], tuple[list, te.TensorRTEnvironment | None]] | None = None,
) -> te.TensorRTEnvironment:
    """Everything the build needs, checked before it starts; one RadaError naming all that is missing.

    TensorRT (10+), the CUDA runtime, a driver new enough for TensorRT's CUDA, a GPU, onnx (the
    static check), onnxruntime (the parity check, unless --no-verify), the calibration code (INT8
    without a Q/DQ graph yet), and DLA support in this TensorRT release (--dla-core).
    """
    missing: list[te.Missing] = []
    env = environment
    if env is None:
        found, env = (diagnose or te.diagnose_environment)()
        missing.extend(found)
    if importlib.util.find_spec("onnx") is None:
        missing.append(te.Missing("onnx", "the static check of the graph needs the onnx package", "pip install onnx"))
    if verify:
        problem = _import_problem("onnxruntime")
        if problem:
            missing.append(te.Missing("onnxruntime", f"the parity check needs ONNX Runtime ({problem})",
                                      "pip install onnxruntime (on a Jetson: NVIDIA's onnxruntime-gpu wheel for JetPack), or pass --no-verify"))
    if plan.needs_calibration:
        for module in ("rada_export.calibration.bundle", "onnxruntime.quantization"):
            problem = _import_problem(module)
            if problem:
                missing.append(te.Missing("calibration", f"INT8 calibration needs {module} ({problem})",
                                          "pip install 'rada-export[calib]' and onnxruntime, or calibrate elsewhere and copy the bundle"))
                break
    if plan.dla_core is not None and env is not None:
        mode = dla_build_mode(env.tensorrt_version, plan.precision)
        if not mode.supported:
            missing.append(te.Missing("DLA", mode.reason, "drop --dla-core to build for the GPU, or use JetPack 6.1/6.2 (TensorRT 10.3)"))
    if missing:
        raise te.environment_error(missing)
    return env


def _import_problem(module: str) -> str | None:
    try:
        importlib.import_module(module)
    except Exception as err:  # ImportError, or a broken install failing while it loads
        return f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else 'not importable'}"
    return None


def run_calibration(bundle: Path, images: Path, graph: str = FUSED, reporter: Reporter = SILENT) -> None:
    """Makes the bundle's INT8 Q/DQ ``graph`` with rada_export.calibration (imported only when needed).

    Calibration's own checks apply: it raises VerificationError (nothing written) when INT8 falls
    below its accuracy thresholds; ``rada-export calibrate --accept-degraded`` is the way past that.
    """
    try:
        from rada_export.calibration.bundle import CalibrateRequest, calibrate_bundle
    except ImportError as err:
        try:  # a package-level calibrate_bundle(bundle, images), should calibration offer one
            from rada_export.calibration import calibrate_bundle as calibrate_simple
        except ImportError:
            raise RadaError(
                f"this rada-export cannot calibrate (rada_export.calibration.bundle: {err})",
                "run `rada-export calibrate --bundle BUNDLE --images DIR` with a rada-export that has it, "
                "then rerun without --calib-images",
            ) from None
        reporter.log(f"calibrating INT8 on {images} ...")
        calibrate_simple(bundle, images)
        return
    reporter.log(f"calibrating INT8 {graph} on {images} ...")
    calibrate_bundle(CalibrateRequest(bundle=Path(bundle), images=Path(images), graph=graph), reporter)


@dataclass
class EngineResult:
    engine_path: Path
    meta_path: Path
    meta: dict[str, Any]
    report: EngineReport | None
    build_seconds: float
    timing_cache: Path | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"engine": str(self.engine_path), "meta": str(self.meta_path), "build_seconds": self.build_seconds,
                "timing_cache": str(self.timing_cache) if self.timing_cache else None, "warnings": self.warnings,
                "description": self.meta, "verification": self.report.to_dict() if self.report else None}


def network_flags(trt) -> tuple[int, bool]:
    """(flags for create_network, strongly typed?)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if flag is not None:
        # 10.x: opt in to strong typing. 11.x: accepted and ignored (every network is strongly typed).
        return 1 << int(flag), True
    if te.parse_version(trt.__version__)[:1] >= (11,):
        return 0, True  # an 11.x without the flag: strong typing is the only mode
    raise RadaError(f"TensorRT {trt.__version__} cannot build strongly typed networks", "use TensorRT 10.0 or newer")


def parser_errors(parser) -> list[str]:
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        text = str(err.desc()) if hasattr(err, "desc") else str(err)
        where = []
        for attr in ("node_name", "node_operator"):  # IParserError accessors of TensorRT 9.1+/10
            getter = getattr(err, attr, None)
            try:
                value = getter() if callable(getter) else None
            except Exception:
                value = None
            if value:
                where.append(str(value))
        if not where and hasattr(err, "node"):
            try:
                where.append(f"node #{err.node()}")
            except Exception:
                pass
        lines.append(text + (f" [{' / '.join(where)}]" if where else ""))
    return lines


def _write_atomic(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _serialize(env: te.TensorRTEnvironment, plan: BuildPlan, reporter: Reporter, warnings: list[str], dla: DlaMode | None = None):
    """Parses the graph and builds it; returns (serialized engine, profile shapes, build flags, seconds)."""
    trt = env.trt
    logger = te.make_logger(trt)
    try:
        builder = trt.Builder(logger)
    except Exception as err:
        builder, reason = None, f"{type(err).__name__}: {err}"
    else:
        reason = ""
    if builder is None:
        raise RadaError("TensorRT could not start its builder" + (f" ({reason})" if reason else "") + te._bullets(logger.errors()),
                        cm.GPU_FIX)
    if dla is not None and not dla.strongly_typed:
        flags, strongly_typed = 0, False  # DLA on 10.x: weakly typed, precision from builder flags (dla_build_mode)
    else:
        flags, strongly_typed = network_flags(trt)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file (not parse(bytes)): the parser finds external weights (<name>.onnx.data) beside the file.
    if not parser.parse_from_file(str(plan.onnx_path)):
        messages = parser_errors(parser) or logger.errors()
        raise RadaError(
            f"TensorRT's ONNX parser rejected {plan.entry.file}:" + te._bullets(messages, limit=20),
            "re-export the bundle (rada-export onnx); if an operator is named, see rada_export/tensorrt/onnx_ops.txt "
            "for what this TensorRT supports",
        )
    config = builder.create_builder_config()
    if plan.workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)
    tf32_flag = getattr(trt.BuilderFlag, "TF32", None)
    if tf32_flag is not None:
        if plan.tf32:
            config.set_flag(tf32_flag)
        else:
            config.clear_flag(tf32_flag)

    profile = builder.create_optimization_profile()
    shapes = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        low, opt, high = plan.input_profile(tensor.name)
        if len(tuple(tensor.shape)) != len(low):
            raise RadaError(f"input {tensor.name!r} has rank {len(tuple(tensor.shape))} in the graph and {len(low)} in the manifest",
                            "re-export the bundle")
        profile.set_shape(tensor.name, low, opt, high)
        shapes[tensor.name] = {"min": list(low), "opt": list(opt), "max": list(high)}
    if config.add_optimization_profile(profile) < 0:
        raise RadaError("TensorRT rejected the optimisation profile" + te._bullets(logger.errors()), "check the batch options")

    cache_reused = False
    if plan.timing_cache is not None:
        blob = plan.timing_cache.read_bytes() if plan.timing_cache.is_file() else b""
        cache = config.create_timing_cache(blob)
        # ignore_mismatch=False: a cache from another GPU or TensorRT version is refused, not half used.
        if cache is None or not config.set_timing_cache(cache, False):
            warnings.append(f"timing cache {plan.timing_cache} is from another device or TensorRT version, or damaged: starting a new one")
            config.set_timing_cache(config.create_timing_cache(b""), False)
        else:
            cache_reused = bool(blob)

    mode, dla_fallback = dla, {}
    if plan.dla_core is not None:
        dla_device = getattr(getattr(trt, "DeviceType", None), "DLA", None)
        if dla_device is None:
            raise RadaError(f"TensorRT {trt.__version__} has no DLA support here", "drop --dla-core to build for the GPU")
        cores = int(getattr(builder, "num_DLA_cores", 0) or 0)
        if plan.dla_core >= cores:
            raise RadaError(f"--dla-core {plan.dla_core}: this device has {cores} DLA core(s)",
                            "drop --dla-core (Orin Nano has none), or pass a lower core number")
        config.default_device_type = dla_device
        config.DLA_core = plan.dla_core
        for name in (mode.precision_flags if mode is not None else ()):
            config.set_flag(getattr(trt.BuilderFlag, name))
        if plan.gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        # Which layers the DLA cannot take (they run on the GPU with --gpu-fallback, else the build fails).
        can_run = getattr(config, "can_run_on_DLA", None)
        if can_run is not None:
            for i in range(network.num_layers):
                layer = network.get_layer(i)
                if not can_run(layer):
                    kind = str(layer.type).split(".")[-1]
                    dla_fallback[kind] = dla_fallback.get(kind, 0) + 1
        if dla_fallback and not plan.gpu_fallback:
            counts = ", ".join(f"{kind} x{n}" for kind, n in sorted(dla_fallback.items()))
            raise RadaError(f"{sum(dla_fallback.values())} layers of the {plan.graph} graph cannot run on the DLA ({counts})",
                            "add --gpu-fallback to run them on the GPU (a ViT's attention and LayerNorm always need it)")

    reporter.log(f"building the {plan.precision} {plan.graph} engine with TensorRT {trt.__version__} on {env.device.name} "
                 "(minutes on a Jetson) ...")
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        raise RadaError(
            f"TensorRT could not build the {plan.precision} {plan.graph} engine" + te._bullets(logger.errors(), limit=12),
            "a smaller --max-batch or a larger --workspace often helps; for DLA add --gpu-fallback",
        )
    if plan.timing_cache is not None:
        _write_atomic(plan.timing_cache, config.get_timing_cache().serialize())
    for message in logger.warnings()[-5:]:
        warnings.append(f"TensorRT: {message}")
    build_flags = {
        "strongly_typed": strongly_typed, "tf32": plan.tf32, "workspace_bytes": plan.workspace_bytes,
        "dla_core": plan.dla_core, "gpu_fallback": plan.gpu_fallback,
        "timing_cache": str(plan.timing_cache) if plan.timing_cache else None, "timing_cache_reused": cache_reused,
        "network_flags": flags,
        "dla_mode": mode.reason if mode is not None else None,
        "dla_gpu_layers": dla_fallback if plan.dla_core is not None else None,
    }
    return serialized, shapes, build_flags, seconds


def build_engine(
    bundle: str | os.PathLike,
    graph: str = FUSED,
    precision: str = "fp16",
    min_batch: int = 1,
    opt_batch: int | None = None,
    max_batch: int | None = None,
    workspace_gb: float | None = None,
    timing_cache: str | os.PathLike | None = None,
    dla_core: int | None = None,
    gpu_fallback: bool = False,
    reporter: Reporter = SILENT,
    *,
    tf32: bool | None = None,
    max_classes: int | None = None,
    max_texts: int | None = None,
    calib_images: str | os.PathLike | None = None,
    verify: bool = True,
    seed: int = 0,
    environment: te.TensorRTEnvironment | None = None,
) -> EngineResult:
    """Builds ``bundle/engines/<gpu>-sm<cc>-trt<version>/<graph>.<precision>.engine`` and its JSON.

    Order: the request, the ONNX file's checksum and the lint of the graph (no TensorRT needed);
    then every prerequisite at once (TensorRT, CUDA runtime, driver, GPU, onnxruntime for parity,
    calibration code, DLA support: :func:`check_prerequisites`); then (INT8 with ``calib_images``
    and no Q/DQ graph yet) calibration; the lint again for the installed TensorRT; the build; then
    parity against ONNX Runtime FP32.

    An engine that built is never deleted: it is written (atomically) with its JSON before parity
    runs. When parity cannot run, the JSON says "parity not checked" and a warning says why; when
    parity fails, the JSON says so (the runtime then does not pick the engine) and
    VerificationError is raised. ``tf32`` defaults to off for FP32 engines, on otherwise.
    """
    plan = plan_build(bundle, graph, precision, min_batch, opt_batch, max_batch, workspace_gb, timing_cache, dla_core,
                      gpu_fallback, tf32=tf32, max_classes=max_classes, max_texts=max_texts, calib_images=calib_images)
    warnings = list(plan.notes)
    if not plan.needs_calibration:
        verify_sources(plan)
        check_graph_ops(plan, None, warnings)
    env = check_prerequisites(plan, verify, environment)
    if plan.needs_calibration:
        run_calibration(plan.bundle, plan.calib_images, plan.graph, reporter)
        plan = plan_build(bundle, graph, precision, min_batch, opt_batch, max_batch, workspace_gb, timing_cache, dla_core,
                          gpu_fallback, tf32=tf32, max_classes=max_classes, max_texts=max_texts)
        verify_sources(plan)
    onnx_sha = plan.manifest.files[plan.entry.file]
    check_graph_ops(plan, env.tensorrt_version, [])
    dla = dla_build_mode(env.tensorrt_version, plan.precision) if plan.dla_core is not None else None
    if dla is not None:
        warnings.append(f"DLA: {dla.reason}")

    engine_env = env.engine_environment
    out_dir = plan.bundle / te.ENGINES_DIR / engine_env.dir_name
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RadaError(f"cannot create {out_dir} ({err.strerror or err})", "make the bundle folder writable") from None
    final = out_dir / te.engine_file_name(plan.graph, plan.precision)
    meta_file = te.meta_path(final)

    serialized, shapes, build_flags, seconds = _serialize(env, plan, reporter, warnings, dla)
    tmp = final.with_name(f".{final.name}.partial-{os.getpid()}")
    entry_inputs = plan.entry.inputs
    try:
        digest = hashlib.sha256()
        with open(tmp, "wb") as fh:
            fh.write(serialized)
        digest.update(memoryview(serialized))
        size = tmp.stat().st_size
        del serialized
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    meta = {
        "format": te.META_FORMAT,
        "graph": plan.graph,
        "precision": plan.precision,
        "engine_file": final.name,
        "engine_size": size,
        "engine_sha256": digest.hexdigest(),
        "onnx_file": plan.entry.file,
        "onnx_sha256": onnx_sha,
        "external_data": plan.entry.external_data,
        "tensorrt_version": engine_env.tensorrt_version,
        "gpu_name": engine_env.gpu_name,
        "compute_capability": engine_env.compute_capability,
        "cuda_runtime": cm.runtime_version(env.cudart),
        "dla_core": plan.dla_core,
        "profiles": [shapes],
        # inputs whose first axis holds independent rows: the runtime splits larger batches on them
        "batch_inputs": [n for n, dims in entry_inputs.items() if dims and dims[0] in ("batch", "num_texts")],
        "build_flags": build_flags,
        "build_seconds": round(seconds, 3),
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "bundle_model": plan.manifest.model,
        "bundle_pretrained": plan.manifest.pretrained,
        "num_classes": len(plan.manifest.class_names),
        "opset": plan.manifest.opset,
        "rada_export_version": __version__,
        "verification": {"passed": None, "status": "parity not checked",
                         "reason": "--no-verify" if not verify else "the parity check did not finish"},
    }
    _write_atomic(meta_file, (json_dumps(meta) + "\n").encode("utf-8"))  # the engine is usable from here on

    report = None
    if verify:
        reporter.log("checking parity against ONNX Runtime FP32 ...")
        try:
            engine = te.TensorRTEngine(final, environment=env, meta=meta, verify_file=False)
            try:
                report = verify_engine(plan.bundle, plan.manifest, plan.graph, plan.precision, engine.run, plan.ranges,
                                       tf32=plan.tf32, seed=seed)
            finally:
                engine.close()
        except Exception as err:  # parity could not run (ONNX Runtime, memory, ...): keep the engine, say so
            reason = err.problem if isinstance(err, RadaError) else f"{type(err).__name__}: {err}"
            meta["verification"] = {"passed": None, "status": "parity not checked", "reason": reason}
            warnings.append(f"parity not checked ({reason}); the engine is kept at {final}: "
                            f"check it with `rada-export trt --bundle {plan.bundle} --graph {plan.graph} --precision {plan.precision}` again")
        else:
            used = report.results[0].thresholds if report.results else thresholds_for(plan.precision, plan.tf32)
            meta["verification"] = {"passed": report.passed, "status": "passed" if report.passed else "failed",
                                    "thresholds": used.describe(), "reference": "ONNX Runtime FP32 (CPU)", "notes": report.notes}
        _write_atomic(meta_file, (json_dumps(meta) + "\n").encode("utf-8"))
        if report is not None and not report.passed:
            raise VerificationError(report, f"the TensorRT {plan.precision} {plan.graph} engine is below the parity thresholds; "
                                            f"it is kept at {final} for inspection, and the runtime will not use it")
    else:
        warnings.append("parity not checked (--no-verify)")
    return EngineResult(engine_path=final, meta_path=meta_file, meta=meta, report=report, build_seconds=seconds,
                        timing_cache=plan.timing_cache, warnings=warnings)


def json_dumps(data: Any) -> str:
    import json

    return json.dumps(data, indent=2, default=str)


__all__ = ["BuildPlan", "DlaMode", "EngineResult", "build_engine", "check_prerequisites", "dla_build_mode", "plan_build",
           "verify_sources", "check_graph_ops", "network_flags", "run_calibration", "is_jetson", "PRECISIONS"]
