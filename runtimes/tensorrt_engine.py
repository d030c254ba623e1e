"""TensorRT engines on the device: where they live, whether they fit this device, and running them.

An engine is tied to the TensorRT version and the GPU it was built with, so each engine has a JSON
beside it (written by ``rada-export trt``) that records both; :class:`TensorRTEngine` refuses an
engine whose JSON names another TensorRT version or another GPU, before TensorRT sees the file.

TensorRT API used here: the name-based I/O of TensorRT 10 (``num_io_tensors``, ``get_tensor_name``,
``get_tensor_mode``, ``get_tensor_dtype``, ``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``), which TensorRT 11 keeps unchanged. The binding-index API
(``get_binding_*``, ``execute_async_v2``) was removed in 10.0 and is not used. Device memory and
the stream come from the CUDA runtime library through ctypes (:mod:`rada_export.runtimes.cuda_memory`),
not cuda-python, pycuda or torch.

Importing this module imports neither tensorrt nor libcudart: the pure helpers
(:func:`engine_dir_name`, :func:`check_engine_compat`, ...) work on any machine.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from rada_export.errors import RadaError

from . import cuda_memory as cm

ENGINES_DIR = "engines"
ENGINE_SUFFIX = ".engine"
META_FORMAT = 1
MIN_TENSORRT_MAJOR = 10
REQUIRED_META = ("tensorrt_version", "gpu_name", "compute_capability", "graph", "precision")

TENSORRT_FIX = (
    "x86-64 / ARM SBSA: pip install 'rada-export[trt-cu12]' (TensorRT 10.x-11.x for CUDA 12, drivers >= 525) or "
    "'rada-export[trt-cu13]' (CUDA 13, drivers >= 580); "
    "Jetson: use JetPack's own TensorRT (JetPack 6.1/6.2 ship TensorRT 10.3): sudo apt install python3-libnvinfer "
    "(the pip wheels do not target Jetson)"
)
# JetPack releases and the TensorRT they ship (JetPack release notes / TensorRT support matrix).
JETPACK_TENSORRT = {"6.0": "8.6", "6.1": "10.3", "6.2": "10.3"}

ImportModule = Callable[[str], Any]


# ---------------------------------------------------------------------------------------------
# Versions and the environment


def parse_version(version: str) -> tuple[int, ...]:
    """'10.3.0.30' -> (10, 3, 0, 30); non-numeric tails are dropped ('11.0.0b1' -> (11, 0, 0))."""
    parts = []
    for piece in str(version).split("."):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
        if match.end() != len(piece):
            break
    return tuple(parts)


def import_tensorrt(import_module: ImportModule = importlib.import_module):
    """The tensorrt module (10 or newer), or a RadaError that says how to get it."""
    try:
        trt = import_module("tensorrt")
    except ImportError as err:
        raise RadaError(f"TensorRT's Python module `tensorrt` is not installed ({err})", TENSORRT_FIX) from None
    except Exception as err:  # the module exists but its libraries (libnvinfer, CUDA) do not load
        raise RadaError(
            f"TensorRT's Python module `tensorrt` is installed but does not load ({type(err).__name__}: {err})",
            "reinstall TensorRT for this CUDA version: " + TENSORRT_FIX,
        ) from None
    if trt is None:  # sys.modules["tensorrt"] = None blocks the import the same way
        raise RadaError("TensorRT's Python module `tensorrt` is not installed", TENSORRT_FIX)
    version = str(getattr(trt, "__version__", "unknown"))
    parsed = parse_version(version)
    if not parsed or parsed[0] < MIN_TENSORRT_MAJOR:
        jetpack = " (JetPack 6.0 ships TensorRT 8.6)" if parsed[:2] == (8, 6) else ""
        raise RadaError(
            f"TensorRT {version} is too old{jetpack}: rada-export needs TensorRT {MIN_TENSORRT_MAJOR} or newer "
            "(name-based I/O, strongly typed networks)",
            "on a Jetson, upgrade to JetPack 6.1 or 6.2 (TensorRT 10.3); elsewhere pip install 'rada-export[trt-cu12]'",
        )
    return trt


TENSORRT_DISTRIBUTIONS = (("tensorrt-cu13-libs", 13), ("tensorrt_cu13_libs", 13), ("tensorrt-cu13", 13),
                          ("tensorrt-cu12-libs", 12), ("tensorrt_cu12_libs", 12), ("tensorrt-cu12", 12))


def tensorrt_cuda_major(version_of: Callable[[str], str] | None = None) -> int | None:
    """The CUDA major the installed TensorRT wheels are built for (tensorrt-cu12 / -cu13), None when unknown.

    JetPack's apt packages are no pip distribution: None there (they match JetPack's CUDA 12).
    """
    if version_of is None:
        from importlib.metadata import PackageNotFoundError, version

        def version_of(name: str) -> str:
            try:
                return version(name)
            except PackageNotFoundError:
                return ""
    for name, major in TENSORRT_DISTRIBUTIONS:
        if version_of(name):
            return major
    return None


@dataclass(frozen=True)
class EngineEnvironment:
    """What an engine is tied to: the TensorRT version and the GPU (name and compute capability)."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.7"

    @property
    def major(self) -> int:
        return int(self.compute_capability.split(".")[0])

    @property
    def minor(self) -> int:
        return int(self.compute_capability.split(".")[1])

    @property
    def dir_name(self) -> str:
        return engine_dir_name(self.gpu_name, self.major, self.minor, self.tensorrt_version)


@dataclass
class TensorRTEnvironment:
    """The loaded modules and the device: what building and running engines need."""

    trt: Any
    cudart: Any
    device: cm.DeviceInfo

    @property
    def tensorrt_version(self) -> str:
        return str(self.trt.__version__)

    @property
    def engine_environment(self) -> EngineEnvironment:
        return EngineEnvironment(self.tensorrt_version, self.device.name, self.device.compute_capability)


@dataclass(frozen=True)
class Missing:
    component: str  # "TensorRT", "CUDA runtime", "NVIDIA driver", "NVIDIA GPU", "onnxruntime", ...
    detail: str
    fix: str


def diagnose_environment(
    import_module: ImportModule = importlib.import_module, device: int = 0, *,
    load_cudart: Callable[..., Any] | None = None, cuda_major: int | None | str = "detect",
) -> tuple[list[Missing], TensorRTEnvironment | None]:
    """Everything TensorRT needs that is missing here (all of it, not only the first), or the environment.

    Checked: TensorRT itself (10 or newer), the CUDA runtime library, a driver new enough for the
    CUDA major TensorRT was built for (``tensorrt-cu12`` / ``-cu13`` wheels), and a GPU.
    """
    missing: list[Missing] = []
    trt = cudart = None
    try:
        trt = import_tensorrt(import_module)
    except RadaError as err:
        missing.append(Missing("TensorRT", err.problem, err.fix or TENSORRT_FIX))
    major = tensorrt_cuda_major() if cuda_major == "detect" else cuda_major
    try:
        cudart = (load_cudart or cm.cudart)(prefer_major=major)
    except RadaError as err:
        missing.append(Missing("CUDA runtime", err.problem, err.fix or cm.CUDART_FIX))
    if cudart is not None:
        driver = cudart.driver_version()
        problem = cm.diagnose_driver(driver, major, f"TensorRT {getattr(trt, '__version__', '')}".strip())
        if problem is None:
            problem = cm.diagnose_driver(driver, cudart.major, f"the CUDA runtime {cudart.path}")
        if problem is not None:
            missing.append(Missing("NVIDIA driver", problem, cm.driver_fix(driver) if driver else cm.GPU_FIX))
        else:
            count, reason = cm.gpu_count(cudart)
            if count < 1:
                missing.append(Missing("NVIDIA GPU", reason or "no CUDA device", cm.GPU_FIX))
            elif device >= count:
                missing.append(Missing("NVIDIA GPU", f"device {device} requested, {count} present", "use a device index below the count"))
    if missing:
        return missing, None
    return [], TensorRTEnvironment(trt=trt, cudart=cudart, device=cm.device_info(cudart, device))


def environment_error(missing: list[Missing]) -> RadaError:
    names = ", ".join(m.component for m in missing)
    problem = f"cannot build or run TensorRT engines here: missing {names}" + "".join(f"\n  - {m.component}: {m.detail}" for m in missing)
    fix = "\n  ".join(f"{m.component}: {m.fix}" for m in missing)
    return RadaError(problem, fix)


def require_environment(import_module: ImportModule = importlib.import_module, device: int = 0) -> TensorRTEnvironment:
    """The TensorRT environment, or one RadaError naming every missing piece and how to get it."""
    missing, env = diagnose_environment(import_module, device)
    if missing:
        raise environment_error(missing)
    return env


# ---------------------------------------------------------------------------------------------
# Where engines live, and whether one fits this device


def engine_dir_name(gpu_name: str, major: int, minor: int, trt_version: str) -> str:
    """'NVIDIA GeForce RTX 4090', 8, 9, '10.3.0' -> 'nvidia-geforce-rtx-4090-sm89-trt10.3.0'."""
    slug = re.sub(r"[^a-z0-9]+", "-", str(gpu_name).lower()).strip("-") or "gpu"
    version = re.sub(r"[^0-9A-Za-z.]+", "-", str(trt_version)).strip("-.") or "unknown"
    return f"{slug}-sm{int(major)}{int(minor)}-trt{version}"


def engine_file_name(graph: str, precision: str) -> str:
    return f"{graph}.{precision}{ENGINE_SUFFIX}"


def meta_path(engine_path: str | os.PathLike) -> Path:
    """The JSON beside an engine: model.fp16.engine -> model.fp16.json."""
    path = Path(engine_path)
    stem = path.name[: -len(ENGINE_SUFFIX)] if path.name.endswith(ENGINE_SUFFIX) else path.stem
    return path.with_name(stem + ".json")


def engine_path(bundle: str | os.PathLike, graph: str, precision: str, env: EngineEnvironment) -> Path:
    return Path(bundle) / ENGINES_DIR / env.dir_name / engine_file_name(graph, precision)


def read_engine_meta(engine_path: str | os.PathLike) -> dict[str, Any]:
    path = meta_path(engine_path)
    if not path.is_file():
        raise RadaError(
            f"engine {engine_path} has no {path.name} beside it (the TensorRT version and GPU it was built for)",
            "rebuild it with `rada-export trt`, which writes both files",
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RadaError(f"{path} is not a readable engine description ({err})", "rebuild the engine with `rada-export trt`") from None
    return validate_meta(meta, path)


def validate_meta(meta: Any, where: str | os.PathLike = "engine description") -> dict[str, Any]:
    if not isinstance(meta, dict):
        raise RadaError(f"{where} is not an engine description (a JSON object expected)", "rebuild the engine with `rada-export trt`")
    absent = [key for key in REQUIRED_META if not meta.get(key)]
    if absent:
        raise RadaError(f"{where} lacks {', '.join(absent)}", "rebuild the engine with `rada-export trt`")
    return meta


def check_engine_compat(meta: Mapping[str, Any], current: EngineEnvironment, engine_path: str | os.PathLike | None = None) -> None:
    """Raises unless the engine was built with this TensorRT version on this GPU (name and compute capability)."""
    meta = validate_meta(dict(meta), engine_path or "engine description")
    built = f"TensorRT {meta['tensorrt_version']} on {meta['gpu_name']} (compute capability {meta['compute_capability']})"
    here = f"TensorRT {current.tensorrt_version} on {current.gpu_name} (compute capability {current.compute_capability})"
    differs = []
    if str(meta["tensorrt_version"]) != current.tensorrt_version:
        differs.append("TensorRT version")
    if str(meta["compute_capability"]) != current.compute_capability:
        differs.append("compute capability")
    if str(meta["gpu_name"]) != current.gpu_name:
        differs.append("GPU")
    if differs:
        name = Path(engine_path).name if engine_path else "the engine"
        graph, precision = meta.get("graph", "model"), meta.get("precision", "fp16")
        raise RadaError(
            f"{name} was built with {built}, but this device has {here} (different {', '.join(differs)}); "
            "TensorRT engines only run where they were built",
            f"rebuild it on this device: rada-export trt --bundle <bundle> --graph {graph} --precision {precision}",
        )


def check_engine_matches_bundle(meta: Mapping[str, Any], manifest: Any) -> None:
    """Raises unless the engine was built from the ONNX file this bundle's manifest lists (same sha256)."""
    onnx_file, built_from = meta.get("onnx_file"), meta.get("onnx_sha256")
    files = getattr(manifest, "files", {}) or {}
    if not onnx_file or not built_from:
        raise RadaError("the engine description does not name the ONNX file it was built from", "rebuild the engine with `rada-export trt`")
    expected = files.get(onnx_file)
    if expected is None:
        raise RadaError(f"the engine was built from {onnx_file}, which this bundle does not list", "rebuild the engine from this bundle")
    if expected != built_from:
        raise RadaError(
            f"the engine was built from another version of {onnx_file} (sha256 {built_from[:12]}..., the bundle has {expected[:12]}...)",
            "rebuild the engine from this bundle: rada-export trt --bundle <bundle> "
            f"--graph {meta.get('graph', 'model')} --precision {meta.get('precision', 'fp16')}",
        )


def current_engine_environment(import_module: ImportModule = importlib.import_module, device: int = 0) -> EngineEnvironment:
    return require_environment(import_module, device).engine_environment


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


def list_engines(bundle: str | os.PathLike) -> list[tuple[Path, dict[str, Any] | None]]:
    """Every engine in the bundle, with its description (None when that is missing or unreadable)."""
    root = Path(bundle) / ENGINES_DIR
    found = []
    for path in sorted(root.glob(f"*/*{ENGINE_SUFFIX}")) if root.is_dir() else []:
        try:
            meta = read_engine_meta(path)
        except RadaError:
            meta = None
        found.append((path, meta))
    return found


def scan_engines(bundle: str | os.PathLike) -> dict[str, dict[str, Any] | None]:
    """``{path relative to the bundle: description or None}`` for every engine under BUNDLE/engines/<dir>/.

    The folder is untrusted like the rest of a bundle: entries that resolve outside it (symlinks)
    are left out, and unreadable descriptions are None.
    """
    bundle = Path(bundle)
    root = bundle / ENGINES_DIR
    if not root.is_dir():
        return {}
    inside = root.resolve()
    found: dict[str, dict[str, Any] | None] = {}
    for path, meta in list_engines(bundle):
        try:
            resolved = path.resolve()
            meta_resolved = meta_path(path).resolve()
        except OSError:
            continue
        if not (resolved.is_relative_to(inside) and meta_resolved.is_relative_to(inside)):
            continue
        found[path.relative_to(bundle).as_posix()] = meta
    return found


@dataclass(frozen=True)
class Placement:
    """Where one graph runs: a TensorRT engine (``engine``, relative to the bundle) or ONNX Runtime."""

    graph: str
    backend: str  # "tensorrt" or "onnxruntime"
    precision: str
    reason: str
    engine: str | None = None


def _engine_problem(meta: Mapping[str, Any] | None, manifest: Any, current: EngineEnvironment) -> str | None:
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
    return None


def select_engines(
    manifest: Any,
    engines: Mapping[str, Mapping[str, Any] | None],
    current: EngineEnvironment | None,
    precision: str,
    unavailable: str | None = None,
) -> dict[str, Placement]:
    """Per graph of the bundle: the engine to run it with, or ONNX Runtime, and why. A pure function.

    ``engines`` is :func:`scan_engines`' answer (engine path -> description), ``current`` the GPU and
    TensorRT version here (None when TensorRT cannot run: ``unavailable`` says why). A graph gets
    an engine built on this GPU with this TensorRT version, from this bundle's ONNX file (same
    sha256), that did not fail parity, in ``precision``, or in FP32 for graphs that the bundle has
    no ``precision`` variant of (text encoder, head). Every other graph runs on ONNX Runtime.
    """
    graphs = getattr(manifest, "graphs", {}) or {}
    base_graphs = [g for g in graphs if "." not in g]
    placements: dict[str, Placement] = {}
    for graph in base_graphs:
        has_variant = manifest.graph_key(graph, precision) in graphs
        ort_precision = precision if has_variant else "fp32"
        wanted = [precision] if has_variant or precision == "fp32" else [precision, "fp32"]
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
                problem = _engine_problem(meta, manifest, current)
                if problem is None:
                    chosen = (rel, meta)
                    break
                rejected.append(f"{rel}: {problem}")
            if chosen:
                break
        if chosen is not None:
            rel, meta = chosen
            verification = meta.get("verification") if isinstance(meta.get("verification"), Mapping) else {}
            note = "" if verification.get("passed") is True else ", parity not checked"
            placements[graph] = Placement(graph, "tensorrt", str(meta.get("precision")), f"TensorRT engine {rel}{note}", rel)
        else:
            why = "; ".join(rejected[:3]) if rejected else f"no {'/'.join(wanted)} {graph} engine for {current.dir_name}"
            placements[graph] = Placement(graph, "onnxruntime", ort_precision, why)
    return placements


def describe_placements(placements: Mapping[str, Placement], onnxruntime: str) -> str:
    """'model: TensorRT (engines/.../model.fp16.engine); image_encoder, text_encoder, head: ONNX Runtime CPU'."""
    groups: dict[str, list[str]] = {}
    for graph, placement in placements.items():
        label = f"TensorRT {placement.precision} ({placement.engine})" if placement.backend == "tensorrt" else onnxruntime
        groups.setdefault(label, []).append(graph)
    return "; ".join(f"{', '.join(graphs)}: {label}" for label, graphs in groups.items())


# ---------------------------------------------------------------------------------------------
# Splitting batches to an engine's profile


def plan_chunks(total: int, low: int, high: int) -> list[tuple[int, int, int]]:
    """(start, stop, rows sent) per engine call for ``total`` rows and a profile accepting ``low``..``high``.

    Slices hold at most ``high`` rows; a last slice below ``low`` (fixed-batch DLA engines) is
    padded up to ``low`` rows and its extra outputs are dropped. A pure function.
    """
    if low < 1 or high < low:
        raise RadaError(f"the engine's batch range {low}..{high} is not usable", "rebuild the engine with rada-export trt")
    chunks = []
    for start in range(0, int(total), high):
        stop = min(start + high, int(total))
        chunks.append((start, stop, max(stop - start, low)))
    return chunks


def _rows(array: np.ndarray, start: int, stop: int, size: int) -> np.ndarray:
    part = array[start:stop]
    if size > len(part):  # pad with copies of the last row; its outputs are dropped
        part = np.concatenate([part, np.repeat(part[-1:], size - len(part), axis=0)])
    return np.ascontiguousarray(part)


# ---------------------------------------------------------------------------------------------
# Logging


def make_logger(trt, keep: int = 200):
    """A TensorRT logger that keeps recent warnings and errors (to put in our error messages)."""

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[tuple[int, str]] = []

        def log(self, severity, msg):  # noqa: D401 - TensorRT's callback
            level = int(severity)
            if level <= int(trt.ILogger.Severity.WARNING):
                self.messages.append((level, str(msg)))
                del self.messages[:-keep]

        def errors(self) -> list[str]:
            return [m for level, m in self.messages if level <= int(trt.ILogger.Severity.ERROR)]

        def warnings(self) -> list[str]:
            return [m for level, m in self.messages if level == int(trt.ILogger.Severity.WARNING)]

        def clear(self) -> None:
            self.messages.clear()

    return _Logger()


def _bullets(lines: list[str], limit: int = 8) -> str:
    shown = [f"\n  - {line.strip()}" for line in lines[-limit:]]
    return "".join(shown) if shown else ""


# ---------------------------------------------------------------------------------------------
# Running an engine


def _dims(shape) -> tuple[int, ...]:
    return tuple(int(d) for d in shape)


def numpy_dtype(trt, trt_dtype) -> np.dtype:
    try:
        return np.dtype(trt.nptype(trt_dtype))
    except Exception:
        raise RadaError(
            f"the engine has an input or output of type {trt_dtype}, which numpy cannot hold",
            "build engines with float32/float16/int32/int64/uint8 inputs and outputs (rada-export's graphs do)",
        ) from None


def _coerce(value: Any, dtype: np.dtype, name: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == dtype:
        return np.ascontiguousarray(arr)
    kind, want = arr.dtype.kind, dtype.kind
    if kind == "f" and want == "f":
        return np.ascontiguousarray(arr, dtype=dtype)
    if kind in "iu" and want in "iu":
        info = np.iinfo(dtype)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise RadaError(f"input {name!r}: values outside the range of {dtype.name}", f"pass {dtype.name} values")
        return np.ascontiguousarray(arr, dtype=dtype)
    raise RadaError(f"input {name!r} must be {dtype.name}, got {arr.dtype.name}", f"pass a numpy array of {dtype.name}")


class TensorRTEngine:
    """One deserialized engine with its execution context, stream and reusable device buffers.

    ``run(feeds)`` takes numpy arrays by input name and returns numpy arrays by output name; input
    shapes may change from call to call within the engine's optimisation profile; larger batches
    are split to it. Thread-safe: calls are serialised on the engine's one execution context.
    """

    def __init__(
        self,
        engine_path: str | os.PathLike,
        bundle_manifest: Any = None,
        *,
        environment: TensorRTEnvironment | None = None,
        meta: Mapping[str, Any] | None = None,
        verify_file: bool = True,
    ):
        self.path = Path(engine_path)
        self._closed = True
        if not self.path.is_file():
            raise RadaError(f"TensorRT engine {self.path} does not exist", "build it with `rada-export trt --bundle <bundle>`")
        self.meta = validate_meta(dict(meta), self.path) if meta is not None else read_engine_meta(self.path)
        env = environment if environment is not None else require_environment()
        # Checked before TensorRT sees the file: a foreign engine is refused with both sides named,
        # instead of TensorRT's own "serialization version" or "platform" error.
        check_engine_compat(self.meta, env.engine_environment, self.path)
        if bundle_manifest is not None:
            check_engine_matches_bundle(self.meta, bundle_manifest)
        data = self.path.read_bytes()
        if self.meta.get("engine_size") is not None and len(data) != int(self.meta["engine_size"]):
            raise RadaError(
                f"{self.path} has {len(data)} bytes, its description says {self.meta['engine_size']} (truncated or replaced)",
                "rebuild the engine with `rada-export trt`",
            )
        if verify_file and self.meta.get("engine_sha256") and hashlib.sha256(data).hexdigest() != self.meta["engine_sha256"]:
            raise RadaError(f"{self.path} does not match the checksum in its description (corrupt or replaced)",
                            "rebuild the engine with `rada-export trt`")

        self._env = env
        trt, cudart = env.trt, env.cudart
        self._trt, self._cudart = trt, cudart
        self._logger = make_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        if self.meta.get("dla_core") is not None:
            # A DLA engine must be deserialized by a runtime set to the same DLA core.
            self._runtime.DLA_core = int(self.meta["dla_core"])
        self._engine = self._runtime.deserialize_cuda_engine(data)
        del data
        if self._engine is None:
            raise RadaError(f"TensorRT could not load {self.path}" + _bullets(self._logger.errors()),
                            "rebuild the engine on this device with `rada-export trt`")
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise RadaError(f"TensorRT could not create an execution context for {self.path} (out of GPU memory?)"
                            + _bullets(self._logger.errors()), "close other GPU programs, or rebuild with a smaller --max-batch")
        self._stream = cm.Stream(cudart)
        self._lock = threading.Lock()
        self._closed = False

        self.input_names: list[str] = []
        self.output_names: list[str] = []
        self._dtypes: dict[str, np.dtype] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.input_names if is_input else self.output_names).append(name)
            self._dtypes[name] = numpy_dtype(trt, self._engine.get_tensor_dtype(name))
            self._shapes[name] = _dims(self._engine.get_tensor_shape(name))
        self._profiles = {name: self._profile(name) for name in self.input_names}
        self._buffers = {name: cm.DeviceBuffer(cudart) for name in self.input_names + self.output_names}

    # -- introspection

    def _profile(self, name: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        shapes = self._engine.get_tensor_profile_shape(name, 0)
        return tuple(_dims(s) for s in shapes)  # (min, opt, max)

    def profile(self, name: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) shapes an input accepts."""
        return self._profiles[name]

    def dtype(self, name: str) -> np.dtype:
        return self._dtypes[name]

    @property
    def max_batch(self) -> int:
        return min(self._profiles[name][2][0] for name in self.input_names) if self.input_names else 0

    # -- running

    def _check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        declared = self._shapes[name]
        lo, _, hi = self._profiles[name]
        wanted = ", ".join("?" if d < 0 else str(d) for d in declared)
        if len(shape) != len(declared):
            raise RadaError(f"input {name!r} must have {len(declared)} dimensions ({wanted}), got shape {shape}",
                            f"pass an array of shape ({wanted})")
        for axis, (got, fixed, low, high) in enumerate(zip(shape, declared, lo, hi)):
            if fixed >= 0 and got != fixed:
                raise RadaError(f"input {name!r} must have size {fixed} on axis {axis} ({wanted}), got shape {shape}",
                                f"pass an array of shape ({wanted})")
            if not low <= got <= high:
                hint = (f"split it into chunks of at most {high}, or rebuild the engine with a larger range "
                        "(rada-export trt --max-batch / --max-classes / --max-texts)") if got > high else f"pass at least {low}"
                raise RadaError(f"input {name!r}: size {got} on axis {axis} is outside the engine's range [{low}, {high}]", hint)

    def _batch_inputs(self) -> list[str]:
        """Inputs whose first axis is a batch of independent rows (images, prompts): those a big call is split on."""
        recorded = self.meta.get("batch_inputs")
        if isinstance(recorded, list):
            return [n for n in recorded if n in self.input_names]
        # Engines described before batch_inputs was recorded: only a single-input engine is split.
        return list(self.input_names) if len(self.input_names) == 1 and self._shapes[self.input_names[0]][:1] == (-1,) else []

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Runs the engine on ``feeds`` (numpy arrays by input name); returns the outputs by name.

        A batch larger than the engine's profile (or smaller than a fixed-batch DLA engine's) is
        run in slices the profile accepts (:func:`plan_chunks`), the outputs joined on axis 0.
        Calls from several threads are serialised: the context, stream and buffers are shared.
        """
        if self._closed:
            raise RadaError("this TensorRT engine was closed", "create a new TensorRTEngine")
        unknown = sorted(set(feeds) - set(self.input_names))
        absent = [n for n in self.input_names if n not in feeds]
        if unknown or absent:
            raise RadaError(
                f"the engine takes inputs {self.input_names}; got {sorted(feeds)}",
                f"pass exactly these inputs: {', '.join(self.input_names)}",
            )
        arrays = {name: _coerce(feeds[name], self._dtypes[name], name) for name in self.input_names}
        batched = [n for n in self._batch_inputs() if arrays[n].ndim >= 1]
        sizes = {len(arrays[n]) for n in batched}
        if len(sizes) == 1:
            total = sizes.pop()
            low = max(self._profiles[n][0][0] for n in batched)
            high = min(self._profiles[n][2][0] for n in batched)
            if total and not low <= total <= high:
                parts = []
                for start, stop, size in plan_chunks(total, low, high):
                    chunk = {n: (_rows(a, start, stop, size) if n in batched else a) for n, a in arrays.items()}
                    out = self._run_checked(chunk)
                    parts.append({k: v[: stop - start] for k, v in out.items()})
                return {k: np.concatenate([p[k] for p in parts]) for k in self.output_names}
        return self._run_checked(arrays)

    def _run_checked(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, arr in arrays.items():
            self._check_shape(name, tuple(arr.shape))
        with self._lock:
            if self._closed:
                raise RadaError("this TensorRT engine was closed", "create a new TensorRTEngine")
            return self._run_once(arrays)

    def _run_once(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, arr in arrays.items():
            if not self._context.set_input_shape(name, tuple(arr.shape)):
                raise RadaError(f"TensorRT rejected shape {tuple(arr.shape)} for input {name!r}" + _bullets(self._logger.errors()),
                                "pass a shape within the engine's optimisation profile")
        outputs = {}
        for name in self.output_names:
            shape = _dims(self._context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RadaError(f"TensorRT cannot tell the shape of output {name!r} ({shape})", "check the input shapes")
            outputs[name] = np.empty(shape, dtype=self._dtypes[name])
        for name, arr in list(arrays.items()) + list(outputs.items()):
            ptr = self._buffers[name].ensure(arr.nbytes)
            self._context.set_tensor_address(name, ptr)
        for name, arr in arrays.items():
            cm.copy_to_device(self._cudart, self._buffers[name].ptr, arr, self._stream)
        self._logger.clear()
        if not self._context.execute_async_v3(self._stream.handle):
            self._stream.synchronize()
            raise RadaError("TensorRT failed to run the engine" + _bullets(self._logger.errors()), "check the inputs; rebuild the engine if this persists")
        for name, arr in outputs.items():
            cm.copy_to_host(self._cudart, arr, self._buffers[name].ptr, self._stream)
        self._stream.synchronize()  # also keeps `arrays` alive until the copies are done
        return outputs

    __call__ = run

    def close(self) -> None:
        """Frees the device buffers, the stream, the context and the engine (idempotent)."""
        if getattr(self, "_closed", True):
            return
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._stream.synchronize()
            except Exception:
                pass
            for buf in self._buffers.values():
                buf.free()
            self._stream.close()
        # The context must go before the engine, the engine before the runtime.
        self._context = None
        self._engine = None
        self._runtime = None

    def __enter__(self) -> "TensorRTEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # best effort; close() is the contract
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"TensorRTEngine({str(self.path)!r}, inputs={self.input_names}, outputs={self.output_names})"
