"""Whether TensorRT can run here: importing it, its version, and every missing piece named at once.

Importing this module imports neither tensorrt nor libcudart; :func:`diagnose_environment` loads
them and reports all that is missing (TensorRT 10+, the CUDA runtime, a new enough driver, a GPU)
instead of stopping at the first.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable

from rada_export.errors import RadaError

from . import cuda_memory as cm
from .engine_layout import EngineEnvironment

MIN_TENSORRT_MAJOR = 10

TENSORRT_FIX = (
    "x86-64 / ARM SBSA: pip install 'rada-export[trt-cu12]' (TensorRT 10.x for CUDA 12, drivers >= 525) or "
    "'rada-export[trt-cu13]' (TensorRT 10.x for CUDA 13, drivers >= 580); TensorRT 11.x, not yet checked by "
    "rada-export: 'rada-export[trt11-cu12]' or 'rada-export[trt11-cu13]'; "
    "Jetson: use JetPack's own TensorRT (JetPack 6.1/6.2 ship TensorRT 10.3): sudo apt install python3-libnvinfer "
    "(the pip wheels do not target Jetson); it installs into the system Python, which a virtual environment sees "
    "only when it is created with the system site packages included (venv's system-site-packages option)"
)
# Where JetPack's apt packages (python3-libnvinfer) put the `tensorrt` module: the system Python's
# site packages (Debian layout; JetPack 6 is Ubuntu 22.04 with Python 3.10). A venv sees them only when
# made with them (`python3 -m venv --system-site-packages`, docs.python.org/3/library/venv.html).
JETSON_MARKERS = ("/etc/nv_tegra_release",)
SYSTEM_SITE_PACKAGES = ("/usr/lib/python3/dist-packages", "/usr/lib/python3.10/dist-packages", "/usr/lib/python3.12/dist-packages")


def jetpack_tensorrt_fix(markers: tuple[str, ...] = JETSON_MARKERS, site_packages: tuple[str, ...] = SYSTEM_SITE_PACKAGES) -> str | None:
    """On a Jetson: what to do when this Python cannot import TensorRT. None elsewhere.

    JetPack installs TensorRT; a missing module there is nearly always a virtual environment made
    without the system site packages, so the advice must not be to install what is installed.
    """
    if not any(Path(m).exists() for m in markers):
        return None
    found = next((d for d in site_packages if (Path(d) / "tensorrt").is_dir()), None)
    if found is not None:
        return (f"JetPack's TensorRT is installed ({found}/tensorrt) in the system Python's site packages, which this "
                "Python does not see: make the virtual environment with them (python3 -m venv --system-site-packages VENV, "
                "then pip install the rada-export wheel into it), or run with the system python3")
    return ("JetPack 6.1/6.2's TensorRT Python module is not installed: sudo apt install python3-libnvinfer "
            "(part of nvidia-jetpack), then use the system python3 or a virtual environment made with "
            "python3 -m venv --system-site-packages")


# JetPack releases and the TensorRT they ship (JetPack release notes / TensorRT support matrix).
JETPACK_TENSORRT = {"6.0": "8.6", "6.1": "10.3", "6.2": "10.3"}

TENSORRT_DISTRIBUTIONS = (("tensorrt-cu13-libs", 13), ("tensorrt_cu13_libs", 13), ("tensorrt-cu13", 13),
                          ("tensorrt-cu12-libs", 12), ("tensorrt_cu12_libs", 12), ("tensorrt-cu12", 12))

ImportModule = Callable[[str], Any]


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


def tensorrt_fix() -> str:
    """How to get TensorRT here: on a Jetson what fits its install (:func:`jetpack_tensorrt_fix`), else the extras."""
    return jetpack_tensorrt_fix() or TENSORRT_FIX


def import_tensorrt(import_module: ImportModule = importlib.import_module):
    """The tensorrt module (10 or newer), or a RadaError that says how to get it."""
    try:
        trt = import_module("tensorrt")
    except ImportError as err:
        raise RadaError(f"TensorRT's Python module `tensorrt` is not installed ({err})", tensorrt_fix()) from None
    except Exception as err:  # the module exists but its libraries (libnvinfer, CUDA) do not load
        raise RadaError(
            f"TensorRT's Python module `tensorrt` is installed but does not load ({type(err).__name__}: {err})",
            "reinstall TensorRT for this CUDA version: " + TENSORRT_FIX,
        ) from None
    if trt is None:  # sys.modules["tensorrt"] = None blocks the import the same way
        raise RadaError("TensorRT's Python module `tensorrt` is not installed", tensorrt_fix())
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
    trt = None
    try:
        trt = import_tensorrt(import_module)
    except RadaError as err:
        missing.append(Missing("TensorRT", err.problem, err.fix or tensorrt_fix()))
    major = tensorrt_cuda_major() if cuda_major == "detect" else cuda_major
    found, cudart = diagnose_cuda(major, f"TensorRT {getattr(trt, '__version__', '')}".strip(), device, load_cudart)
    missing.extend(found)
    if missing:
        return missing, None
    return [], TensorRTEnvironment(trt=trt, cudart=cudart, device=cm.device_info(cudart, device))


def diagnose_cuda(
    major: int | None, what: str = "TensorRT", device: int = 0, load_cudart: Callable[..., Any] | None = None,
) -> tuple[list[Missing], Any]:
    """What TensorRT needs from CUDA and is missing here (runtime library, driver, GPU), and the runtime when it loads.

    ctypes only: nothing here imports TensorRT, so `rada-export trt --dry-run` can ask it on a host.
    """
    missing: list[Missing] = []
    cudart = None
    try:
        cudart = (load_cudart or cm.cudart)(prefer_major=major)
    except RadaError as err:
        missing.append(Missing("CUDA runtime", err.problem, err.fix or cm.CUDART_FIX))
    if cudart is not None:
        driver = cudart.driver_version()
        problem = cm.diagnose_driver(driver, major, what)
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
    return missing, cudart


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


def current_engine_environment(import_module: ImportModule = importlib.import_module, device: int = 0) -> EngineEnvironment:
    return require_environment(import_module, device).engine_environment
