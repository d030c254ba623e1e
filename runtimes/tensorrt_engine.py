"""TensorRT engines on the device: where they live, whether they fit this device, and running them.

An engine is tied to the TensorRT version and the GPU it was built with, so each engine has a JSON
beside it (written by ``rada-export trt``) that records both; :class:`TensorRTEngine` refuses an
engine whose JSON names another TensorRT version or another GPU, before TensorRT sees the file.

TensorRT API used here: the name-based I/O of TensorRT 10 (``num_io_tensors``, ``get_tensor_name``,
``get_tensor_mode``, ``get_tensor_dtype``, ``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``), which TensorRT 11 keeps unchanged. The binding-index API
(``get_binding_*``, ``execute_async_v2``) was removed in 10.0 and is not used. Device memory and
the stream come from cuda-python (:mod:`rada_export.runtimes.cuda_memory`), not pycuda or torch.

Importing this module imports neither tensorrt nor cuda-python: the pure helpers
(:func:`engine_dir_name`, :func:`check_engine_compat`, ...) work on any machine.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
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
    "pip install 'rada-export[trt]' (TensorRT 10+ wheels for x86-64 and ARM SBSA Linux with an NVIDIA driver); "
    "on a Jetson, use JetPack's own TensorRT: sudo apt install python3-libnvinfer "
    "(JetPack 6 ships TensorRT 10.3; a Jetson cannot use the pip wheels)"
)

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
        raise RadaError(
            f"TensorRT {version} is too old: rada-export needs TensorRT {MIN_TENSORRT_MAJOR} or newer "
            "(name-based I/O, strongly typed networks)",
            "pip install 'tensorrt>=10' (x86-64/SBSA), or upgrade a Jetson to JetPack 6 (TensorRT 10.3)",
        )
    return trt


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
    component: str  # "TensorRT", "cuda-python", "NVIDIA GPU"
    detail: str
    fix: str


def diagnose_environment(
    import_module: ImportModule = importlib.import_module, device: int = 0,
) -> tuple[list[Missing], TensorRTEnvironment | None]:
    """Everything TensorRT needs that is missing here (all of it, not only the first), or the environment."""
    missing: list[Missing] = []
    trt = cudart = None
    try:
        trt = import_tensorrt(import_module)
    except RadaError as err:
        missing.append(Missing("TensorRT", err.problem, err.fix or TENSORRT_FIX))
    try:
        cudart = cm.import_cudart(import_module)
    except RadaError as err:
        missing.append(Missing("cuda-python", err.problem, err.fix or cm.CUDA_PYTHON_FIX))
    if cudart is not None:
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
    problem = f"TensorRT cannot run here: missing {names}" + "".join(f"\n  - {m.component}: {m.detail}" for m in missing)
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
    shapes may change from call to call within the engine's optimisation profile. Not thread-safe:
    use one instance per thread.
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

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Runs the engine on ``feeds`` (numpy arrays by input name); returns the outputs by name."""
        if self._closed:
            raise RadaError("this TensorRT engine was closed", "create a new TensorRTEngine")
        unknown = sorted(set(feeds) - set(self.input_names))
        absent = [n for n in self.input_names if n not in feeds]
        if unknown or absent:
            raise RadaError(
                f"the engine takes inputs {self.input_names}; got {sorted(feeds)}",
                f"pass exactly these inputs: {', '.join(self.input_names)}",
            )
        arrays = {}
        for name in self.input_names:
            arr = _coerce(feeds[name], self._dtypes[name], name)
            self._check_shape(name, tuple(arr.shape))
            if not self._context.set_input_shape(name, tuple(arr.shape)):
                raise RadaError(f"TensorRT rejected shape {tuple(arr.shape)} for input {name!r}" + _bullets(self._logger.errors()),
                                "pass a shape within the engine's optimisation profile")
            arrays[name] = arr
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
