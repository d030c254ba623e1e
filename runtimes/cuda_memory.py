"""CUDA devices, streams and device memory through cuda-python: no pycuda, no torch.

cuda-python returns every result as a tuple ``(error, *values)``; :func:`call` turns a non-zero
error into a :class:`CudaError` that names the call and CUDA's own description of the error.

Module names: cuda-python 12.6 and newer (and every 13.x) put the runtime API in
``cuda.bindings.runtime``; older releases only have ``cuda.cudart``. Both are tried, newest first.
Nothing here imports tensorrt.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from rada_export.errors import RadaError

CUDART_MODULES = ("cuda.bindings.runtime", "cuda.cudart")
CUDA_PYTHON_FIX = (
    "pip install 'rada-export[trt]' (it brings cuda-python); on a Jetson with JetPack 6, "
    "pip install 'cuda-python>=12,<13' to match JetPack's CUDA 12"
)
GPU_FIX = (
    "TensorRT needs an NVIDIA GPU and its driver: check that `nvidia-smi` (or `tegrastats` on a Jetson) "
    "sees the GPU, that the driver is at least as new as the CUDA version cuda-python was built for, "
    "and, in a container, that it was started with the GPU (docker run --gpus all / --runtime nvidia)"
)

ImportModule = Callable[[str], Any]


class CudaError(RadaError):
    """A CUDA runtime call failed (out of memory, lost device, ...)."""


def import_cudart(import_module: ImportModule = importlib.import_module):
    """The CUDA runtime bindings of cuda-python, or a RadaError saying how to install them."""
    reasons = []
    for name in CUDART_MODULES:
        try:
            return import_module(name)
        except ImportError as err:
            reasons.append(f"{name}: {err}")
        except Exception as err:  # a broken install can fail with OSError/RuntimeError while loading libraries
            reasons.append(f"{name}: {type(err).__name__}: {err}")
    raise RadaError("cuda-python is not installed or does not load (" + "; ".join(reasons) + ")", CUDA_PYTHON_FIX)


def error_text(cudart, err) -> str:
    """'cudaErrorName: description' for a cudaError_t, as well as the bindings allow."""
    try:
        name = cudart.cudaGetErrorName(err)[1]
        text = cudart.cudaGetErrorString(err)[1]
        name = name.decode() if isinstance(name, bytes) else str(name)
        text = text.decode() if isinstance(text, bytes) else str(text)
        return f"{name}: {text}"
    except Exception:
        return str(err)


def _failed(err) -> bool:
    return int(err) != 0


def call(cudart, function: str, *args):
    """Calls ``cudart.<function>(*args)``; returns its values (none, one, or a tuple) or raises CudaError."""
    result = getattr(cudart, function)(*args)
    if not isinstance(result, tuple):  # defensive: every binding returns a tuple today
        result = (result,)
    err, values = result[0], result[1:]
    if _failed(err):
        raise CudaError(
            f"CUDA call {function} failed: {error_text(cudart, err)}",
            "if this is out of memory, lower --max-batch or close other GPU programs; otherwise check the GPU "
            "and driver (" + GPU_FIX + ")",
        )
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def gpu_count(cudart) -> tuple[int, str | None]:
    """(number of CUDA devices, None) or (0, the reason none is usable)."""
    try:
        err, count = cudart.cudaGetDeviceCount()
    except Exception as err:  # pragma: no cover - bindings that cannot even reach the driver library
        return 0, f"cudaGetDeviceCount raised {type(err).__name__}: {err}"
    if _failed(err):
        return 0, f"cudaGetDeviceCount: {error_text(cudart, err)}"
    if int(count) < 1:
        return 0, "cudaGetDeviceCount found no CUDA device"
    return int(count), None


def require_gpu(cudart) -> int:
    count, reason = gpu_count(cudart)
    if count < 1:
        raise RadaError(f"no usable NVIDIA GPU ({reason})", GPU_FIX)
    return count


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    major: int
    minor: int
    total_memory: int = 0

    @property
    def compute_capability(self) -> str:
        return f"{self.major}.{self.minor}"


def device_info(cudart, device: int = 0) -> DeviceInfo:
    props = call(cudart, "cudaGetDeviceProperties", device)
    name = props.name
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name).split(b"\0", 1)[0].decode("utf-8", "replace")
    return DeviceInfo(
        index=device, name=str(name).strip(), major=int(props.major), minor=int(props.minor),
        total_memory=int(getattr(props, "totalGlobalMem", 0) or 0),
    )


def runtime_version(cudart) -> str | None:
    try:
        err, version = cudart.cudaRuntimeGetVersion()
    except Exception:
        return None
    if _failed(err):
        return None
    return f"{int(version) // 1000}.{(int(version) % 1000) // 10}"


class Stream:
    """A CUDA stream of our own (TensorRT warns about, and serialises on, the default stream)."""

    def __init__(self, cudart):
        self._cudart = cudart
        self._stream = call(cudart, "cudaStreamCreate")

    @property
    def handle(self) -> int:
        """The stream as the integer TensorRT's execute_async_v3 takes."""
        return int(self._stream)

    @property
    def raw(self):
        return self._stream

    def synchronize(self) -> None:
        call(self._cudart, "cudaStreamSynchronize", self._stream)

    def close(self) -> None:
        if self._stream is not None:
            try:
                self._cudart.cudaStreamDestroy(self._stream)
            finally:
                self._stream = None


class DeviceBuffer:
    """One device allocation that is reused across calls and grown (never shrunk) when needed."""

    ALIGN = 256  # cudaMalloc returns 256-byte aligned memory; sizes are rounded to the same grain

    def __init__(self, cudart):
        self._cudart = cudart
        self.ptr = 0
        self.capacity = 0

    def ensure(self, nbytes: int) -> int:
        """A device pointer to at least ``nbytes`` bytes (the old contents are not kept on growth)."""
        nbytes = max(int(nbytes), 1)
        if nbytes > self.capacity:
            size = -(-nbytes // self.ALIGN) * self.ALIGN
            self.free()
            self.ptr = int(call(self._cudart, "cudaMalloc", size))
            self.capacity = size
        return self.ptr

    def free(self) -> None:
        if self.ptr:
            ptr, self.ptr, self.capacity = self.ptr, 0, 0
            self._cudart.cudaFree(ptr)


def copy_to_device(cudart, dst: int, array: np.ndarray, stream: Stream) -> None:
    """Asynchronous host-to-device copy; ``array`` must stay alive until the stream is synchronised."""
    if not array.flags.c_contiguous:
        raise ValueError("copy_to_device needs a C-contiguous array")
    if array.nbytes:
        call(cudart, "cudaMemcpyAsync", dst, array.ctypes.data, array.nbytes,
             cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, stream.raw)


def copy_to_host(cudart, array: np.ndarray, src: int, stream: Stream) -> None:
    """Asynchronous device-to-host copy into ``array`` (valid after the stream is synchronised)."""
    if not array.flags.c_contiguous:
        raise ValueError("copy_to_host needs a C-contiguous array")
    if array.nbytes:
        call(cudart, "cudaMemcpyAsync", array.ctypes.data, src, array.nbytes,
             cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream.raw)
