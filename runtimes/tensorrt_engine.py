"""Running a TensorRT engine on the device: :class:`TensorRTEngine`, numpy arrays in and out.

:class:`TensorRTEngine` refuses, before TensorRT sees the file, an engine this device did not build
(an engine is executable code: :func:`~rada_export.runtimes.engine_layout.trusted_engines`) and one
whose JSON names another TensorRT version or another GPU (:mod:`rada_export.runtimes.engine_layout`).

TensorRT API used here: the name-based I/O of TensorRT 10 (``num_io_tensors``, ``get_tensor_name``,
``get_tensor_mode``, ``get_tensor_dtype``, ``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``), which TensorRT 11 keeps unchanged. The binding-index API
(``get_binding_*``, ``execute_async_v2``) was removed in 10.0 and is not used. Device memory and
the stream come from the CUDA runtime library through ctypes (:mod:`rada_export.runtimes.cuda_memory`),
not cuda-python, pycuda or torch.

The rest of the TensorRT side of the runtime, which this module uses and which works on any machine:
:mod:`~rada_export.runtimes.trt_environment` (importing TensorRT, naming what is missing),
:mod:`~rada_export.runtimes.engine_layout` (where engines live, their JSON, compatibility),
:mod:`~rada_export.runtimes.engine_selection` (which graph runs on which engine) and
:mod:`~rada_export.runtimes.batch_chunks` (splitting batches to the profile). Importing this module
imports neither tensorrt nor libcudart.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from rada_export.errors import RadaError

from . import cuda_memory as cm
from .batch_chunks import plan_chunks, take_rows
from .engine_layout import (
    UNTRUSTED_FIX, check_engine_compat, check_engine_matches_bundle, is_trusted_engine, read_engine_meta,
    trusted_engines_file, validate_meta,
)
from .trt_environment import TensorRTEnvironment, require_environment
from .trt_logging import bullet_list, shared_logger

__all__ = ["NUMPY_TYPES", "TensorRTEngine", "numpy_dtype", "numpy_dtype_of"]


def _dims(shape) -> tuple[int, ...]:
    return tuple(int(d) for d in shape)


# TensorRT DataType member names -> numpy. Not trt.nptype: its table gained INT64 only in later
# releases (older ones raise TypeError for it), and the text encoder's token ids are INT64, which
# TensorRT binds as INT64 since 9.0 (onnx-tensorrt docs/Changelog.md, "TensorRT 9.0 EA": "ONNX models
# with INT64 I/O require INT64 bindings"). BF16, FP8, INT4 and FP4 have no numpy type.
NUMPY_TYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
               "BOOL": np.bool_, "UINT8": np.uint8}


def numpy_dtype_of(type_name: str) -> np.dtype:
    """The numpy dtype of a TensorRT DataType named ``type_name`` ("FLOAT", "DataType.INT64", ...)."""
    name = str(type_name).rsplit(".", 1)[-1].upper()
    if name not in NUMPY_TYPES:
        raise RadaError(
            f"the engine has an input or output of type {name}, which numpy cannot hold",
            "build engines with float32/float16/int32/int64/uint8/bool inputs and outputs (rada-export's graphs have them)",
        )
    return np.dtype(NUMPY_TYPES[name])


def numpy_dtype(trt, trt_dtype) -> np.dtype:
    return numpy_dtype_of(getattr(trt_dtype, "name", str(trt_dtype)))


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
        trusted: bool = False,
    ):
        self.path = Path(engine_path)
        self._closed = True
        if not self.path.is_file():
            raise RadaError(f"TensorRT engine {self.path} does not exist", "build it with `rada-export trt --bundle <bundle>`")
        self.meta = validate_meta(dict(meta), self.path) if meta is not None else read_engine_meta(self.path)
        data = self.path.read_bytes()  # read once: the bytes checked are the bytes TensorRT gets
        if self.meta.get("engine_size") is not None and len(data) != int(self.meta["engine_size"]):
            raise RadaError(
                f"{self.path} has {len(data)} bytes, its description says {self.meta['engine_size']} (truncated or replaced)",
                "rebuild the engine with `rada-export trt`",
            )
        digest = hashlib.sha256(data).hexdigest() if verify_file or not trusted else None
        if verify_file and self.meta.get("engine_sha256") and digest != self.meta["engine_sha256"]:
            raise RadaError(f"{self.path} does not match the checksum in its description (corrupt or replaced)",
                            "rebuild the engine with `rada-export trt`")
        # An engine is executable code: only those this device built (engine_layout.trusted_engines) are
        # deserialized, unless the caller vouches for this one (trusted=True: the build that just wrote it).
        if not trusted and not is_trusted_engine(digest):
            raise RadaError(f"{self.path} was not built on this device by `rada-export trt` (its sha256 is not in "
                            f"{trusted_engines_file()}); a TensorRT engine is executable code, so one that came with "
                            "a bundle is not loaded", UNTRUSTED_FIX)
        env = environment if environment is not None else require_environment()
        # Checked before TensorRT sees the file: a foreign engine is refused with both sides named,
        # instead of TensorRT's own "serialization version" or "platform" error.
        check_engine_compat(self.meta, env.engine_environment, self.path)
        if bundle_manifest is not None:
            check_engine_matches_bundle(self.meta, bundle_manifest)

        self._env = env
        trt, cudart = env.trt, env.cudart
        self._trt, self._cudart = trt, cudart
        self._logger = shared_logger(trt)  # one per process: TensorRT keeps the first logger it is given
        with self._logger.capture() as log:
            self._runtime = trt.Runtime(self._logger)
            if self.meta.get("dla_core") is not None:
                # A DLA engine must be deserialized by a runtime set to the same DLA core.
                self._runtime.DLA_core = int(self.meta["dla_core"])
            self._engine = self._runtime.deserialize_cuda_engine(data)
            del data
            if self._engine is None:
                raise RadaError(f"TensorRT could not load {self.path}" + bullet_list(log.errors()),
                                "rebuild the engine on this device with `rada-export trt`")
            self._context = self._engine.create_execution_context()
            if self._context is None:
                raise RadaError(f"TensorRT could not create an execution context for {self.path} (out of GPU memory?)"
                                + bullet_list(log.errors()),
                                "close other GPU programs, or rebuild the engine with a smaller max batch "
                                "(`rada-export trt --max-batch N`)")
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
            if not low <= got <= high and axis in (1, 2) and len(declared) == 4 and declared[3] < 0:
                # a frame side of a frames graph (N x H x W x C uint8): the profile holds the frame sizes it was built for
                raise RadaError(f"input {name!r}: frame side {got} on axis {axis} is outside the engine's range [{low}, {high}]",
                                "resize the frames on the host first, or re-export with `rada-export onnx --embed-preprocess "
                                "--frame-size WxH` (the camera's size) and rebuild the engines with `rada-export trt`")
            if not low <= got <= high:
                hint = f"pass at least {low}" if got < low else (
                    f"split it into chunks of at most {high}, or rebuild the engine with a larger range "
                    "(`rada-export trt --max-batch N`; for class and prompt counts `rada-export trt --max-classes N` "
                    "or `rada-export trt --max-texts N`)")
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
                    chunk = {n: (take_rows(a, start, stop, size) if n in batched else a) for n, a in arrays.items()}
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
            with self._logger.capture() as log:
                return self._run_once(arrays, log)

    def _run_once(self, arrays: dict[str, np.ndarray], log) -> dict[str, np.ndarray]:
        for name, arr in arrays.items():
            if not self._context.set_input_shape(name, tuple(arr.shape)):
                raise RadaError(f"TensorRT rejected shape {tuple(arr.shape)} for input {name!r}" + bullet_list(log.errors()),
                                "pass a shape within the engine's optimisation profile")
        outputs = {}
        for name in self.output_names:
            shape = _dims(self._context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RadaError(f"TensorRT cannot tell the shape of output {name!r} ({shape})", "check the input shapes")
            outputs[name] = np.empty(shape, dtype=self._dtypes[name])
        for name, arr in list(arrays.items()) + list(outputs.items()):
            ptr = self._buffers[name].ensure(arr.nbytes)
            if not self._context.set_tensor_address(name, ptr):  # False: the engine has no such tensor
                raise RadaError(f"TensorRT refused the device address of {name!r}" + bullet_list(log.errors()),
                                "rebuild the engine from this bundle with `rada-export trt`")
        for name, arr in arrays.items():
            cm.copy_to_device(self._cudart, self._buffers[name].ptr, arr, self._stream)
        if not self._context.execute_async_v3(self._stream.handle):
            self._stream.synchronize()
            raise RadaError("TensorRT failed to run the engine" + bullet_list(log.errors()), "check the inputs; rebuild the engine if this persists")
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
