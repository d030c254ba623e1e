"""The CUDA runtime (libcudart) through ctypes: devices, one stream, device memory, async copies.

Why ctypes and not cuda-python: the engine runtime needs eleven CUDA calls, and cuda-python ties
its wheel to one CUDA major (12.x or 13.x) that must also match the driver, which is one more
package to get right on a Jetson. polygraphy drives the CUDA runtime the same way (its
``polygraphy/cuda/cuda.py`` loads libcudart with ctypes). The shared library comes from the
NVIDIA pip wheels (``nvidia-cuda-runtime-cu12`` puts ``nvidia/cuda_runtime/lib/libcudart.so.12``,
``nvidia-cuda-runtime`` 13.x ``nvidia/cu13/lib/libcudart.so.13``), from JetPack / the CUDA
toolkit (``/usr/local/cuda/lib64``), or from the dynamic loader's path.

Every call returns a ``cudaError_t`` (0 = cudaSuccess); :meth:`CudaRuntime.check` turns any other
value into a :class:`CudaError` (a RadaError) naming the call and CUDA's own name and description
of the error (``cudaGetErrorName`` / ``cudaGetErrorString``). Prototypes (argtypes/restype) are
declared for every function, so 64-bit pointers and ``size_t`` are never truncated to ``int``.
References, CUDA Runtime API (https://docs.nvidia.com/cuda/cuda-runtime-api/):
cudaGetDeviceCount, cudaSetDevice, cudaDeviceGetAttribute (cudaDevAttrComputeCapabilityMajor = 75,
Minor = 76), cudaGetDeviceProperties (``name`` is the first member, char[256]), cudaMemGetInfo,
cudaDriverGetVersion / cudaRuntimeGetVersion (1000 * major + 10 * minor), cudaMalloc, cudaFree,
cudaStreamCreateWithFlags (cudaStreamNonBlocking = 1), cudaStreamSynchronize, cudaStreamDestroy,
cudaMemcpyAsync (cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2).

Host arrays are ordinary (pageable) numpy memory: cudaMemcpyAsync from pageable memory is staged
by the driver and is correct, only not overlapped with compute; the engine synchronises the
stream before the arrays go out of scope. Nothing here imports tensorrt.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from rada_export.errors import RadaError

CUDA_SUCCESS = 0
MEMCPY_HOST_TO_DEVICE = 1
MEMCPY_DEVICE_TO_HOST = 2
STREAM_NON_BLOCKING = 1
ATTR_CC_MAJOR = 75
ATTR_CC_MINOR = 76
PROPS_BUFFER = 16384  # cudaDeviceProp is about 1 KB; only its first member (name) is read

# The smallest Linux driver for each CUDA major (CUDA toolkit release notes, "CUDA Toolkit and
# Corresponding Driver Versions": 12.x minor-version compatibility from 525.60.13, 13.0 from 580.65.06).
MIN_DRIVER = {12: "525.60.13", 13: "580.65.06"}

# Wheel folders (relative to a site-packages entry) and sonames, newest CUDA major first.
WHEEL_LIBS = (("nvidia/cu13/lib", "libcudart.so.13"), ("nvidia/cuda_runtime/lib", "libcudart.so.12"))
SONAMES = ("libcudart.so.13", "libcudart.so.12", "libcudart.so")
SYSTEM_DIRS = ("/usr/local/cuda/lib64", "/usr/local/cuda/targets/aarch64-linux/lib", "/usr/local/cuda/targets/x86_64-linux/lib")

CUDART_FIX = (
    "x86-64 / SBSA: pip install 'rada-export[trt-cu12]' (CUDA 12, any driver >= 525) or "
    "'rada-export[trt-cu13]' (CUDA 13, driver >= 580); they bring libcudart. "
    "Jetson: libcudart comes with JetPack (/usr/local/cuda/lib64); check that it exists"
)
GPU_FIX = (
    "TensorRT needs an NVIDIA GPU and its driver: check that `nvidia-smi` (or `tegrastats` on a Jetson) "
    "sees the GPU and, in a container, that it was started with the GPU (docker run --gpus all / --runtime nvidia)"
)


class CudaError(RadaError):
    """A CUDA runtime call failed (out of memory, lost device, a driver too old, ...)."""


def cuda_version_text(version: int) -> str:
    """12040 -> '12.4' (CUDA's 1000 * major + 10 * minor encoding)."""
    return f"{int(version) // 1000}.{(int(version) % 1000) // 10}"


def candidate_libraries(search_path: Sequence[str] | None = None) -> list[str]:
    """Where libcudart may be, most specific first: pip wheels on sys.path, CUDA/JetPack folders, sonames."""
    found: list[str] = []
    for entry in (sys.path if search_path is None else search_path):
        for folder, name in WHEEL_LIBS:
            path = Path(entry or ".") / folder / name
            if path.is_file():
                found.append(str(path))
    for folder in SYSTEM_DIRS:
        for name in SONAMES:
            path = Path(folder) / name
            if path.is_file():
                found.append(str(path))
    found.extend(SONAMES)  # the dynamic loader's own search (LD_LIBRARY_PATH, ld.so.cache)
    return list(dict.fromkeys(found))


class CudaRuntime:
    """A loaded libcudart with the prototypes of the calls used here."""

    def __init__(self, lib: ctypes.CDLL, path: str):
        self.lib = lib
        self.path = path
        c_int_p = ctypes.POINTER(ctypes.c_int)
        c_void_pp = ctypes.POINTER(ctypes.c_void_p)
        c_size_p = ctypes.POINTER(ctypes.c_size_t)
        prototypes = {
            "cudaGetErrorName": ([ctypes.c_int], ctypes.c_char_p),
            "cudaGetErrorString": ([ctypes.c_int], ctypes.c_char_p),
            "cudaDriverGetVersion": ([c_int_p], ctypes.c_int),
            "cudaRuntimeGetVersion": ([c_int_p], ctypes.c_int),
            "cudaGetDeviceCount": ([c_int_p], ctypes.c_int),
            "cudaSetDevice": ([ctypes.c_int], ctypes.c_int),
            "cudaDeviceGetAttribute": ([c_int_p, ctypes.c_int, ctypes.c_int], ctypes.c_int),
            "cudaMemGetInfo": ([c_size_p, c_size_p], ctypes.c_int),
            "cudaMalloc": ([c_void_pp, ctypes.c_size_t], ctypes.c_int),
            "cudaFree": ([ctypes.c_void_p], ctypes.c_int),
            "cudaStreamCreateWithFlags": ([c_void_pp, ctypes.c_uint], ctypes.c_int),
            "cudaStreamSynchronize": ([ctypes.c_void_p], ctypes.c_int),
            "cudaStreamDestroy": ([ctypes.c_void_p], ctypes.c_int),
            "cudaMemcpyAsync": ([ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p], ctypes.c_int),
        }
        missing = []
        for name, (argtypes, restype) in prototypes.items():
            try:
                function = getattr(lib, name)
            except AttributeError:
                missing.append(name)
                continue
            function.argtypes, function.restype = argtypes, restype
        if missing:
            raise RadaError(f"{path} is not a usable CUDA runtime (it lacks {', '.join(missing)})", CUDART_FIX)
        # CUDA 12 renamed the properties call (cudaGetDeviceProperties_v2); older libraries only have the first.
        self._props = next((getattr(lib, n) for n in ("cudaGetDeviceProperties_v2", "cudaGetDeviceProperties") if hasattr(lib, n)), None)
        if self._props is not None:
            self._props.argtypes, self._props.restype = [ctypes.c_void_p, ctypes.c_int], ctypes.c_int

    # -- errors

    def error_text(self, err: int) -> str:
        name = self.lib.cudaGetErrorName(int(err)) or b"cudaError"
        text = self.lib.cudaGetErrorString(int(err)) or b""
        return f"{name.decode(errors='replace')} ({int(err)}): {text.decode(errors='replace')}"

    def check(self, err: int, function: str) -> None:
        if int(err) != CUDA_SUCCESS:
            raise CudaError(
                f"CUDA call {function} failed: {self.error_text(err)}",
                "if this is out of memory, run smaller batches or close other GPU programs; otherwise: " + GPU_FIX,
            )

    # -- versions and devices

    def driver_version(self) -> int:
        """The CUDA version the installed driver supports (12040 = 12.4); 0 when there is no driver."""
        value = ctypes.c_int(0)
        if self.lib.cudaDriverGetVersion(ctypes.byref(value)) != CUDA_SUCCESS:
            return 0
        return int(value.value)

    def runtime_version(self) -> int:
        value = ctypes.c_int(0)
        self.check(self.lib.cudaRuntimeGetVersion(ctypes.byref(value)), "cudaRuntimeGetVersion")
        return int(value.value)

    @property
    def major(self) -> int:
        return self.runtime_version() // 1000

    def device_count(self) -> tuple[int, str | None]:
        """(number of devices, None), or (0, why none is usable)."""
        count = ctypes.c_int(0)
        err = self.lib.cudaGetDeviceCount(ctypes.byref(count))
        if err != CUDA_SUCCESS:
            return 0, f"cudaGetDeviceCount: {self.error_text(err)}"
        if count.value < 1:
            return 0, "cudaGetDeviceCount found no CUDA device"
        return int(count.value), None

    def set_device(self, device: int) -> None:
        self.check(self.lib.cudaSetDevice(int(device)), "cudaSetDevice")

    def attribute(self, attr: int, device: int) -> int:
        value = ctypes.c_int(0)
        self.check(self.lib.cudaDeviceGetAttribute(ctypes.byref(value), int(attr), int(device)), "cudaDeviceGetAttribute")
        return int(value.value)

    def device_name(self, device: int) -> str:
        if self._props is None:
            return "NVIDIA GPU"
        buffer = ctypes.create_string_buffer(PROPS_BUFFER)
        self.check(self._props(buffer, int(device)), "cudaGetDeviceProperties")
        return buffer.raw[:256].split(b"\0", 1)[0].decode("utf-8", "replace").strip()

    def mem_info(self) -> tuple[int, int]:
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        self.check(self.lib.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total)), "cudaMemGetInfo")
        return int(free.value), int(total.value)

    # -- memory and streams

    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p(0)
        self.check(self.lib.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(int(nbytes))), "cudaMalloc")
        return int(ptr.value or 0)

    def free(self, ptr: int) -> None:
        self.check(self.lib.cudaFree(ctypes.c_void_p(int(ptr))), "cudaFree")

    def stream_create(self) -> int:
        stream = ctypes.c_void_p(0)
        self.check(self.lib.cudaStreamCreateWithFlags(ctypes.byref(stream), STREAM_NON_BLOCKING), "cudaStreamCreateWithFlags")
        return int(stream.value or 0)

    def stream_synchronize(self, stream: int) -> None:
        self.check(self.lib.cudaStreamSynchronize(ctypes.c_void_p(int(stream))), "cudaStreamSynchronize")

    def stream_destroy(self, stream: int) -> None:
        self.check(self.lib.cudaStreamDestroy(ctypes.c_void_p(int(stream))), "cudaStreamDestroy")

    def memcpy_async(self, dst: int, src: int, nbytes: int, kind: int, stream: int) -> None:
        self.check(self.lib.cudaMemcpyAsync(ctypes.c_void_p(int(dst)), ctypes.c_void_p(int(src)), ctypes.c_size_t(int(nbytes)),
                                            int(kind), ctypes.c_void_p(int(stream))), "cudaMemcpyAsync")


LoadLibrary = Callable[[str], ctypes.CDLL]


def load_cudart(candidates: Iterable[str] | None = None, prefer_major: int | None = None,
                load: LoadLibrary = ctypes.CDLL) -> CudaRuntime:
    """The CUDA runtime library that fits this driver, or a RadaError listing what was tried.

    Among the libraries that load, the first whose CUDA major the driver supports wins, with
    ``prefer_major`` (TensorRT's own CUDA major, when known) ahead of the others. When none
    fits the driver, the first that loaded is returned: its calls then fail with
    cudaErrorInsufficientDriver, which :func:`diagnose_driver` turns into advice.
    """
    tried, loaded = [], []
    for name in (candidate_libraries() if candidates is None else list(candidates)):
        try:
            runtime = CudaRuntime(load(name), name)
            runtime.runtime_version()
        except (OSError, RadaError) as err:
            tried.append(f"{name}: {str(err).splitlines()[0][:160]}")
            continue
        loaded.append(runtime)
    if not loaded:
        raise RadaError("the CUDA runtime library (libcudart) was not found or does not load"
                        + (" (tried " + "; ".join(tried[:6]) + ")" if tried else ""), CUDART_FIX)
    driver = loaded[0].driver_version()
    fitting = [r for r in loaded if driver and r.major <= driver // 1000]
    if prefer_major is not None:
        fitting.sort(key=lambda r: r.major != prefer_major)
    return fitting[0] if fitting else loaded[0]


def diagnose_driver(driver_version: int, cuda_major: int | None, what: str) -> str | None:
    """None when a driver supporting CUDA ``driver_version`` can run ``what`` built for CUDA ``cuda_major``; else why not."""
    if driver_version <= 0:
        return "no NVIDIA driver answers (cudaDriverGetVersion reports none)"
    if cuda_major is not None and driver_version // 1000 < cuda_major:
        return (f"the NVIDIA driver supports CUDA up to {cuda_version_text(driver_version)}, but {what} is built for "
                f"CUDA {cuda_major} (needs driver {MIN_DRIVER.get(cuda_major, 'newer')} or newer)")
    return None


def driver_fix(driver_version: int) -> str:
    """Which extra fits a driver that supports CUDA ``driver_version``."""
    if driver_version // 1000 >= 13:
        return "pip install 'rada-export[trt-cu13]' (or [trt-cu12]); both run on this driver"
    if driver_version // 1000 == 12:
        return ("pip uninstall -y tensorrt tensorrt-cu13 tensorrt-cu13-libs tensorrt-cu13-bindings; "
                "pip install 'rada-export[trt-cu12]' (TensorRT for CUDA 12 runs on this driver), "
                f"or upgrade the driver to {MIN_DRIVER[13]} or newer for CUDA 13")
    return f"upgrade the NVIDIA driver to {MIN_DRIVER[12]} or newer (CUDA 12), then pip install 'rada-export[trt-cu12]'"


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


def device_info(cudart: CudaRuntime, device: int = 0) -> DeviceInfo:
    cudart.set_device(device)
    _, total = cudart.mem_info()
    return DeviceInfo(index=device, name=cudart.device_name(device), major=cudart.attribute(ATTR_CC_MAJOR, device),
                      minor=cudart.attribute(ATTR_CC_MINOR, device), total_memory=total)


def gpu_count(cudart: CudaRuntime) -> tuple[int, str | None]:
    return cudart.device_count()


def require_gpu(cudart: CudaRuntime) -> int:
    count, reason = cudart.device_count()
    if count < 1:
        raise RadaError(f"no usable NVIDIA GPU ({reason})", GPU_FIX)
    return count


def runtime_version(cudart: CudaRuntime) -> str | None:
    try:
        return cuda_version_text(cudart.runtime_version())
    except RadaError:
        return None


class Stream:
    """A non-blocking CUDA stream of our own (TensorRT serialises on, and warns about, the default stream)."""

    def __init__(self, cudart: CudaRuntime):
        self._cudart = cudart
        self._stream = cudart.stream_create()

    @property
    def handle(self) -> int:
        """The cudaStream_t as the integer TensorRT's execute_async_v3 takes."""
        return int(self._stream)

    def synchronize(self) -> None:
        self._cudart.stream_synchronize(self._stream)

    def close(self) -> None:
        if self._stream:
            stream, self._stream = self._stream, 0
            self._cudart.stream_destroy(stream)


class DeviceBuffer:
    """One device allocation reused across calls and grown (never shrunk) when needed."""

    ALIGN = 256  # cudaMalloc's own alignment; sizes are rounded to the same grain

    def __init__(self, cudart: CudaRuntime):
        self._cudart = cudart
        self.ptr = 0
        self.capacity = 0

    def ensure(self, nbytes: int) -> int:
        """A device pointer to at least ``nbytes`` bytes (old contents are not kept on growth)."""
        nbytes = max(int(nbytes), 1)
        if nbytes > self.capacity:
            size = -(-nbytes // self.ALIGN) * self.ALIGN
            self.free()
            self.ptr = self._cudart.malloc(size)
            self.capacity = size
        return self.ptr

    def free(self) -> None:
        if self.ptr:
            ptr, self.ptr, self.capacity = self.ptr, 0, 0
            self._cudart.free(ptr)


def copy_to_device(cudart: CudaRuntime, dst: int, array: np.ndarray, stream: Stream) -> None:
    """Asynchronous host-to-device copy; ``array`` must stay alive until the stream is synchronised."""
    if not array.flags.c_contiguous:
        raise ValueError("copy_to_device needs a C-contiguous array")
    if array.nbytes:
        cudart.memcpy_async(dst, array.ctypes.data, array.nbytes, MEMCPY_HOST_TO_DEVICE, stream.handle)


def copy_to_host(cudart: CudaRuntime, array: np.ndarray, src: int, stream: Stream) -> None:
    """Asynchronous device-to-host copy into ``array`` (valid once the stream is synchronised)."""
    if not array.flags.c_contiguous or not array.flags.writeable:
        raise ValueError("copy_to_host needs a writeable C-contiguous array")
    if array.nbytes:
        cudart.memcpy_async(array.ctypes.data, src, array.nbytes, MEMCPY_DEVICE_TO_HOST, stream.handle)


_LOCK = threading.Lock()
_CACHED: dict[int | None, CudaRuntime] = {}


def cudart(prefer_major: int | None = None) -> CudaRuntime:
    """The process-wide CUDA runtime (loaded once; a library cannot be unloaded safely anyway)."""
    with _LOCK:
        if prefer_major not in _CACHED:
            _CACHED[prefer_major] = load_cudart(prefer_major=prefer_major)
        return _CACHED[prefer_major]


__all__ = ["CudaError", "CudaRuntime", "DeviceBuffer", "DeviceInfo", "Stream", "copy_to_device", "copy_to_host", "cudart",
           "candidate_libraries", "device_info", "diagnose_driver", "driver_fix", "gpu_count", "load_cudart", "require_gpu",
           "runtime_version", "CUDART_FIX", "GPU_FIX", "MIN_DRIVER"]
