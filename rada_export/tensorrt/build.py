"""Building a TensorRT engine from a bundle's ONNX graph (host side; runs on the target GPU or Jetson).

Precision comes from the graph itself, never from builder flags:

- FP16: the bundle's ``.fp16`` graph, whose casts keep LayerNorm, Softmax, the normalisations and
  the head in FP32;
- INT8: the bundle's ``.int8`` graph with explicit Q/DQ nodes (``rada-export calibrate``);
- FP32: the plain graph.

This module runs the steps in order and writes the engine and its JSON; each step has its module:
the request checked against the bundle (:mod:`.plan`), the graph's bytes, its operators and every
prerequisite (:mod:`.preflight`), DLA per TensorRT release (:mod:`.dla`), the TensorRT calls
(:mod:`.serialize`) and parity against ONNX Runtime FP32 (:mod:`.verify`).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rada_export.errors import RadaError, VerificationError
from rada_export.progress import SILENT, Reporter
from rada_export.runtimes import cuda_memory as cm
from rada_export.runtimes.bundle.ownership import FILE, Entry, engine_is_recorded, our_engine_description
from rada_export.runtimes.engine_layout import ENGINES_DIR, engine_file_name, meta_path, trust_engine
from rada_export.runtimes.manifest import FUSED, sha256_file
from rada_export.runtimes.parity import ParityReport
from rada_export.runtimes.tensorrt_engine import TensorRTEngine
from rada_export.runtimes.trt_environment import TensorRTEnvironment

from .dla import dla_build_mode
from .plan import BuildPlan, BuildRequest, plan_build
from .preflight import check_graph_ops, check_prerequisites, verify_sources
from .serialize import SerializedEngine, serialize_engine
from .verify import thresholds_for, verify_engine


@dataclass
class EngineResult:
    engine_path: Path
    meta_path: Path
    meta: dict[str, Any]
    report: ParityReport | None
    build_seconds: float
    timing_cache: Path | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"engine": str(self.engine_path), "meta": str(self.meta_path), "build_seconds": self.build_seconds,
                "timing_cache": str(self.timing_cache) if self.timing_cache else None, "warnings": self.warnings,
                "description": self.meta, "verification": self.report.to_dict() if self.report else None}


def build_engine(request: BuildRequest, *, reporter: Reporter = SILENT,
                 environment: TensorRTEnvironment | None = None, plan: BuildPlan | None = None) -> EngineResult:
    """Builds ``bundle/engines/<gpu>-sm<cc>-trt<version>/<graph>.<precision>.engine`` and its JSON, as ``request`` asks.

    Order: the request, the ONNX file's checksum and the lint of the graph (no TensorRT needed);
    then every prerequisite at once (TensorRT, CUDA runtime, driver, GPU, onnxruntime for parity,
    calibration code, DLA support: :func:`check_prerequisites`); then (INT8 with ``calib_images``
    and no Q/DQ graph yet) calibration; the lint again for the installed TensorRT; the build; then
    parity against ONNX Runtime FP32.

    An engine that built is never deleted: it is written (atomically) with its JSON before parity
    runs. When parity cannot run, the JSON says "parity not checked" and a warning says why; when
    parity fails, the JSON says so (the runtime then does not pick the engine) and
    VerificationError is raised. ``tf32`` defaults to off for FP32 engines, on otherwise.

    ``plan``: the :func:`plan_build` of this request, when the caller has made it (``rada-export trt``
    makes it once: what ``--dry-run`` prints is what is built).
    """
    plan = plan if plan is not None else plan_build(request)
    warnings = list(plan.notes)
    if not plan.needs_calibration:
        verify_sources(plan)
        check_graph_ops(plan, None, warnings)
    env = check_prerequisites(plan, request.verify, environment)
    if plan.needs_calibration:
        run_calibration(plan.bundle, plan.calib_images, plan.graph, reporter)
        plan = plan_build(replace(request, calib_images=None))
        verify_sources(plan)
    check_graph_ops(plan, env.tensorrt_version, [])
    dla = dla_build_mode(env.tensorrt_version, plan.precision) if plan.dla_core is not None else None
    if dla is not None:
        warnings.append(f"DLA: {dla.reason}")

    out_dir = plan.bundle / ENGINES_DIR / env.engine_environment.dir_name
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RadaError(f"cannot create {out_dir} ({err.strerror or err})", "make the bundle folder writable") from None
    final = out_dir / engine_file_name(plan.graph, plan.precision)
    meta_file = meta_path(final)
    check_engine_replaceable(final)  # before the minutes-long build, not after it

    built = serialize_engine(env, plan, reporter, warnings, dla)
    if built.timing_cache is not None:
        _write_atomic(plan.timing_cache, built.timing_cache)
    size, sha256 = _write_engine(final, built.data)
    try:  # the device's own record of the engines it built: the runtime loads only those (engine_layout)
        trust_engine(sha256)
    except RadaError as err:
        warnings.append(f"{err.problem}: the runtime will refuse this engine until it is recorded ({err.fix})")
    built.data = built.timing_cache = None  # an engine can take gigabytes: free it before parity loads it again
    meta = engine_description(plan, env, built, final.name, size, sha256)
    reason = "the parity check did not finish" if request.verify else "skipped: verify=False"
    meta["verification"] = {"passed": None, "status": "parity not checked", "reason": reason}
    _write_atomic(meta_file, _json_bytes(meta))  # the engine is usable from here on

    report = None
    if request.verify:
        reporter.log("checking parity against ONNX Runtime FP32 ...")
        report = _check_parity(plan, env, final, meta, request.seed, warnings)
        _write_atomic(meta_file, _json_bytes(meta))
        if report is not None and not report.passed:
            raise VerificationError(report, f"the TensorRT {plan.precision} {plan.graph} engine is below the parity thresholds; "
                                            f"it is kept at {final} for inspection, and the runtime will not use it")
    else:
        warnings.append("parity not checked (verify=False)")
    return EngineResult(engine_path=final, meta_path=meta_file, meta=meta, report=report, build_seconds=built.seconds,
                        timing_cache=plan.timing_cache, warnings=warnings)


def engine_description(plan: BuildPlan, env: TensorRTEnvironment, built: SerializedEngine, engine_file: str, size: int,
                       sha256: str) -> dict[str, Any]:
    """The JSON beside an engine: what it was built from, for which TensorRT and GPU, and how."""
    engine_env = env.engine_environment
    meta = plan.planned_meta()
    meta.update({
        "engine_file": engine_file, "engine_size": size, "engine_sha256": sha256,
        "onnx_file": plan.entry.file, "onnx_sha256": plan.manifest.files[plan.entry.file],
        "tensorrt_version": engine_env.tensorrt_version, "gpu_name": engine_env.gpu_name,
        "compute_capability": engine_env.compute_capability, "cuda_runtime": cm.runtime_version(env.cudart),
        "profiles": [built.profiles], "build_flags": built.build_flags, "build_seconds": round(built.seconds, 3),
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    })
    return meta


def _check_parity(plan: BuildPlan, env: TensorRTEnvironment, final: Path, meta: dict[str, Any], seed: int,
                  warnings: list[str]) -> ParityReport | None:
    """Parity against ONNX Runtime FP32, recorded in ``meta["verification"]``; None when it could not run."""
    try:
        engine = TensorRTEngine(final, environment=env, meta=meta, verify_file=False, trusted=True)  # built just now
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
        return None
    meta["verification"] = {"passed": report.passed, "status": "passed" if report.passed else "failed",
                            "thresholds": thresholds_for(plan.precision, plan.tf32).describe(), "reference": "ONNX Runtime FP32 (CPU)", "notes": report.notes}
    return report


def run_calibration(bundle: Path, images: Path, graph: str = FUSED, reporter: Reporter = SILENT) -> None:
    """Makes the bundle's INT8 Q/DQ ``graph`` with rada_export.calibration (imported only when needed).

    Calibration's own checks apply: it raises VerificationError (nothing written) when INT8 falls
    below its accuracy thresholds; ``rada-export calibrate --accept-degraded`` is the way past that.
    """
    from rada_export.calibration.bundle import CalibrateRequest, calibrate_bundle

    reporter.log(f"calibrating INT8 {graph} on {images} ...")
    calibrate_bundle(CalibrateRequest(bundle=Path(bundle), images=Path(images), graph=graph), reporter)


def check_engine_replaceable(engine: Path) -> None:
    """Refuses to write over a file at an engine's path unless ``rada-export trt`` recorded it there.

    A user's own engine (trtexec's, say) may sit at the name a build would take; only an engine whose
    JSON names its file and sha256 is ours to replace, and a JSON beside it is ours only if it parses
    as one of our descriptions (runtimes/bundle/ownership.py judges both).
    """
    description = meta_path(engine)
    engine_there = engine.exists() or engine.is_symlink()
    if not engine_there and not (description.exists() or description.is_symlink()):
        return
    described = None
    if description.is_file() and not description.is_symlink():
        described = Entry(description.name, FILE, text=description.read_bytes())
    if engine_there:
        regular = engine.is_file() and not engine.is_symlink()
        entry = Entry(engine.name, FILE if regular else "other", sha256=sha256_file(engine) if regular else None)
        if engine_is_recorded(entry, described):
            return
        culprit = engine
    else:
        if our_engine_description(described) is not None:
            return  # our JSON whose engine is gone: rewritten with the new build
        culprit = description
    raise RadaError(f"{culprit} exists and is not an engine rada-export trt recorded there (no description of ours names its sha256)",
                    "move that file elsewhere (it is left untouched), then build again")


def _write_engine(final: Path, data) -> tuple[int, str]:
    """Writes the serialized engine to ``final`` through a temporary file; returns (size, sha256)."""
    tmp = final.with_name(f".{final.name}.partial-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        digest = hashlib.sha256(memoryview(data)).hexdigest()
        size = tmp.stat().st_size
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    return size, digest


def _write_atomic(path: Path, data) -> None:
    """Writes ``data`` (bytes or a buffer) to ``path`` through a temporary file beside it."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _json_bytes(meta: dict[str, Any]) -> bytes:
    return (json.dumps(meta, indent=2, default=str) + "\n").encode("utf-8")


__all__ = ["BuildPlan", "BuildRequest", "EngineResult", "build_engine", "engine_description", "plan_build", "run_calibration"]
