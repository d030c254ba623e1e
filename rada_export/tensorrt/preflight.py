"""What is checked before a TensorRT build starts: the graph's bytes, its operators, and the prerequisites.

All of it runs before the minutes a build takes, so that a build fails early and names every
missing piece at once (:func:`check_prerequisites`).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Callable

from rada_export.errors import RadaError
from rada_export.runtimes.manifest import verify_checksums
from rada_export.runtimes.trt_environment import Missing, TensorRTEnvironment, diagnose_environment, environment_error

from .dla import dla_build_mode
from .plan import BuildPlan


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


def lint_plan(plan: BuildPlan, trt_version: str | None = None):
    """(the TensorRT version linted for, the findings) for the graph the plan builds; None without the onnx package.

    ``trt_version`` None (before TensorRT is loaded): the newest release the operator list knows,
    so nothing a newer TensorRT takes is refused early. The build and ``--dry-run`` both call this.
    """
    from .lint import lint_model
    from .ops import load_supported_ops

    if importlib.util.find_spec("onnx") is None:
        return None
    version = trt_version or ".".join(map(str, load_supported_ops().newest_known))
    # The dynamic dims allowed are those the plan has a profile range for (a frames graph adds its frame dims).
    findings = lint_model(plan.onnx_path, plan.manifest.engine_graph_key(plan.graph, plan.precision), version,
                          profile_dims=tuple(plan.ranges), manifest_inputs=plan.entry.inputs if plan.entry else None)
    return version, findings


def check_graph_ops(plan: BuildPlan, trt_version: str | None, notes: list[str]):
    """The lint of the graph to build (:func:`lint_plan`); raises with one line per finding.

    First with ``trt_version`` None (before TensorRT is loaded), then again with the installed version.
    """
    linted = lint_plan(plan, trt_version)
    if linted is None:
        notes.append("static check skipped: the onnx package is not installed")
        return None
    version, findings = linted
    if findings:
        raise RadaError(
            f"TensorRT {version} cannot parse {plan.entry.file}:" + "".join(f"\n  - {f.line()}" for f in findings[:20]),
            f"re-export the bundle with this rada-export; `rada-export trt --bundle {plan.bundle} --check` lists every finding",
        )
    return findings


# Calibration (rada_export.calibration) runs on onnx, onnxruntime (its quantization tools), numpy and
# Pillow, without torch: the `jetson` extra brings the first two; elsewhere `cpu` brings onnxruntime.
CALIBRATION_FIX = ("calibration needs onnx and onnxruntime: on a Jetson pip install 'rada-export[jetson]', elsewhere "
                   "pip install 'rada-export[cpu]' onnx; or calibrate on the host (`rada-export calibrate`) and copy the bundle")


def missing_tools(plan: BuildPlan, verify: bool) -> list[Missing]:
    """What the build needs besides TensorRT and CUDA and is missing here: onnx, onnxruntime, calibration code."""
    missing: list[Missing] = []
    if importlib.util.find_spec("onnx") is None:
        from .lint import ONNX_FIX

        missing.append(Missing("onnx", "the static check of the graph needs the onnx package", ONNX_FIX))
    if verify:
        problem = import_problem("onnxruntime")
        if problem:
            missing.append(Missing("onnxruntime", f"the parity check needs ONNX Runtime ({problem})",
                                   "pip install onnxruntime (on a Jetson: pip install 'rada-export[jetson]', or NVIDIA's "
                                   "onnxruntime-gpu wheel for the JetPack), or pass verify=False"))
    if plan.needs_calibration:
        for module in ("rada_export.calibration.bundle", "onnxruntime.quantization"):
            problem = import_problem(module)
            if problem:
                missing.append(Missing("calibration", f"INT8 calibration needs {module} ({problem})", CALIBRATION_FIX))
                break
    return missing


def check_prerequisites(
    plan: BuildPlan, verify: bool, environment: TensorRTEnvironment | None = None,
    diagnose: Callable[[], tuple[list, TensorRTEnvironment | None]] | None = None,
) -> TensorRTEnvironment:
    """Everything the build needs, checked before it starts; one RadaError naming all that is missing.

    TensorRT (10+), the CUDA runtime, a driver new enough for TensorRT's CUDA, a GPU, onnx (the
    static check), onnxruntime (the parity check, unless ``verify`` is False), the calibration code
    (INT8 without a Q/DQ graph yet), and DLA support in this TensorRT release (a ``dla_core`` build).
    """
    missing: list[Missing] = []
    env = environment
    if env is None:
        found, env = (diagnose or diagnose_environment)()
        missing.extend(found)
    missing.extend(missing_tools(plan, verify))
    if plan.dla_core is not None and env is not None:
        mode = dla_build_mode(env.tensorrt_version, plan.precision)
        if not mode.supported:
            missing.append(Missing("DLA", mode.reason, "build for the GPU instead (no DLA core), or use JetPack 6.1/6.2 (TensorRT 10.3)"))
    if missing:
        raise environment_error(missing)
    return env


def import_problem(module: str) -> str | None:
    """Why ``module`` does not import (one line), or None when it does."""
    try:
        importlib.import_module(module)
    except Exception as err:  # ImportError, or a broken install failing while it loads
        return f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else 'not importable'}"
    return None
