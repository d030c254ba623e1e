"""`rada-export trt --dry-run`: the build's plan, shown without building. No TensorRT import, no GPU needed.

It makes the plan the build makes (:func:`.plan.plan_build`), runs the lint the build runs
(:func:`.preflight.lint_plan`) and lists the prerequisites found and missing. What only the target
device has (TensorRT, the CUDA runtime, a driver, a GPU, DLA cores) is "missing here" and does not
stop a dry run, whose point is to run on the host; anything else that would stop the build does.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from rada_export.errors import RadaError
from rada_export.runtimes.engine_layout import ENGINES_DIR, meta_path
from rada_export.runtimes.manifest import TEXT_ENCODER
from rada_export.runtimes.trt_environment import (
    TENSORRT_FIX, Missing, diagnose_cuda, parse_version, tensorrt_cuda_major, tensorrt_fix,
)

from .dla import dla_build_mode, is_jetson
from .plan import BuildPlan, BuildRequest, plan_build
from .preflight import lint_plan, missing_tools, verify_sources
from .verify import parity_plan, parity_tokens

# Only the target device has these: a dry run on a host lists them and goes on.
DEVICE_COMPONENTS = frozenset({"TensorRT", "CUDA runtime", "NVIDIA driver", "NVIDIA GPU", "DLA cores"})
TENSORRT_DISTRIBUTIONS = ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu13-libs", "tensorrt-cu12-libs")


@dataclass
class DryRun:
    """What `trt` would do: the plan described, and why it would not start (empty: it would)."""

    plan: dict[str, Any] = field(default_factory=dict)
    found: list[str] = field(default_factory=list)
    missing_here: list[Missing] = field(default_factory=list)  # device-only: do not stop a dry run
    reasons: list[str] = field(default_factory=list)  # each one stops the build

    @property
    def would_build(self) -> bool:
        return not self.reasons

    def to_dict(self) -> dict[str, Any]:
        return {"would_build": self.would_build, "reasons": self.reasons, "found": self.found,
                "missing_here": [{"component": m.component, "detail": m.detail, "fix": m.fix} for m in self.missing_here],
                **self.plan}


def installed_tensorrt(find_spec: Callable[[str], Any] = importlib.util.find_spec) -> tuple[bool, str | None]:
    """(is a `tensorrt` module importable, its version from the package metadata) without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    if find_spec("tensorrt") is None:
        return False, None
    for name in TENSORRT_DISTRIBUTIONS:
        try:
            return True, version(name)
        except PackageNotFoundError:
            continue
    return True, None  # JetPack's apt package: no pip metadata; the version is known once loaded


def survey_device(plan: BuildPlan, jetson: Callable[[], bool] = is_jetson) -> tuple[list[str], list[Missing], str | None]:
    """(found, missing) of what only the device has, and the TensorRT version when the metadata says it."""
    found: list[str] = []
    missing: list[Missing] = []
    present, trt_version = installed_tensorrt()
    if not present:
        missing.append(Missing("TensorRT", "TensorRT's Python module `tensorrt` is not installed", tensorrt_fix()))
    elif trt_version is not None and parse_version(trt_version)[:1] < (10,):
        missing.append(Missing("TensorRT", f"TensorRT {trt_version} is too old: rada-export needs 10 or newer", TENSORRT_FIX))
    else:
        found.append(f"TensorRT {trt_version or '(version known once loaded)'}")
    cuda_missing, cudart = diagnose_cuda(tensorrt_cuda_major(), f"TensorRT {trt_version or ''}".strip())
    missing.extend(cuda_missing)
    if cudart is not None:
        found.append(f"CUDA runtime {cudart.path}")
        if not cuda_missing:
            found.append("NVIDIA driver and GPU")
    if plan.dla_core is not None and not jetson():
        missing.append(Missing("DLA cores", f"dla_core={plan.dla_core} needs a Jetson AGX Orin or Orin NX",
                               "run the build there (Orin Nano and desktop GPUs have no DLA)"))
    return found, missing, trt_version


def typing_mode(plan: BuildPlan, trt_version: str | None) -> str:
    """How the network will be typed, per TensorRT release (:func:`.dla.dla_build_mode`)."""
    if plan.dla_core is None:
        return "strongly typed (precision from the graph's own types; no precision builder flags)"
    if trt_version is not None:
        return dla_build_mode(trt_version, plan.precision).reason
    return ("DLA: TensorRT 10.0-10.7 (JetPack 6.1/6.2): " + dla_build_mode("10.3", plan.precision).reason.split(": ", 1)[1]
            + "; 11.4.1+: strongly typed DLA; other releases: no DLA (refused)")


def describe_plan(plan: BuildPlan, request: BuildRequest, trt_version: str | None) -> dict[str, Any]:
    """The plan as data: files, profile ranges per input, flags, DLA, parity, where the engine goes, its JSON."""
    entry = plan.entry or plan.manifest.graphs[plan.graph]
    folder = f"{ENGINES_DIR}/<gpu>-sm<cc>-trt<version>"
    tokenizer = None
    if plan.graph == TEXT_ENCODER:
        tokenizer = parity_tokens(plan.bundle, plan.manifest, 1, plan.manifest.context_length, request.seed)[1]
    return {
        "bundle": str(plan.bundle), "graph": plan.graph, "precision": plan.precision,
        "onnx_file": plan.entry.file if plan.entry is not None else None,
        "calibrate_first": str(plan.calib_images) if plan.needs_calibration else None,
        "inputs": {name: {"dims": list(dims), "dtype": entry.input_dtypes.get(name, "float32"), **plan.profiles()[name]}
                   for name, dims in entry.inputs.items()},
        "ranges": {dim: list(r) for dim, r in plan.ranges.items()},
        "typing": typing_mode(plan, trt_version),
        "build_flags": {"tf32": plan.tf32, "workspace_bytes": plan.workspace_bytes,
                        "timing_cache": str(plan.timing_cache) if plan.timing_cache else None,
                        "dla_core": plan.dla_core, "gpu_fallback": plan.gpu_fallback},
        "dla": None if plan.dla_core is None else {"core": plan.dla_core, "gpu_fallback": plan.gpu_fallback,
                                                   "batch": plan.batch[1]},
        "parity": parity_plan(plan.manifest, plan.graph, plan.precision, plan.ranges, plan.tf32, tokenizer)
        if request.verify else None,
        "engine": {"folder": folder, "file": plan.engine_file, "json": meta_path(Path(plan.engine_file)).name},
        "metadata": plan.planned_meta(),
        "notes": list(plan.notes),
    }


def dry_run(request: BuildRequest, jetson: Callable[[], bool] = is_jetson) -> DryRun:
    """The plan of ``request`` and whether the build would start; raises nothing for a missing device.

    The plan is made as the build makes it; a ``dla_core`` request is planned as on a Jetson (the
    Jetson itself is listed as missing here when this is not one).
    """
    from .lint import require_onnx

    require_onnx("a dry run, which runs the build's TensorRT check of the graph,")  # a device install without onnx: one clear error
    result = DryRun()
    try:
        plan = plan_build(replace(request), jetson=lambda: True)
    except RadaError as err:
        result.reasons.append(err.problem + (f" (fix: {err.fix})" if err.fix else ""))
        return result
    result.found, result.missing_here, trt_version = survey_device(plan, jetson)
    for missing in missing_tools(plan, request.verify):
        result.reasons.append(f"missing {missing.component}: {missing.detail} (fix: {missing.fix})")
    if trt_version is not None and plan.dla_core is not None and not dla_build_mode(trt_version, plan.precision).supported:
        result.reasons.append(dla_build_mode(trt_version, plan.precision).reason)
    lint: dict[str, Any] = {"skipped": None, "target": None, "findings": []}
    if plan.needs_calibration:
        lint["skipped"] = "the INT8 graph is made by calibration first; the build lints it then"
    else:
        try:
            verify_sources(plan)
        except RadaError as err:
            result.reasons.append(err.problem)
        linted = lint_plan(plan, None)
        if linted is None:
            lint["skipped"] = "the onnx package is not installed"
        else:
            lint["target"], findings = linted
            lint["findings"] = [f.line() for f in findings]
            result.reasons.extend(f"TensorRT {lint['target']} cannot parse it: {f.line()}" for f in findings)
    result.plan = {**describe_plan(plan, request, trt_version), "lint": lint}
    return result


__all__ = ["DEVICE_COMPONENTS", "DryRun", "describe_plan", "dry_run", "installed_tensorrt", "survey_device"]
