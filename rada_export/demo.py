"""`rada-export demo`: the whole job, offline, in one command.

Makes a small labelled image set, trains a head, exports and verifies the bundle, calibrates INT8,
builds TensorRT engines where TensorRT and a GPU exist, runs the device runtime with and without
test-time adaptation, and sums it all up: files, sizes, parity, accuracy, latency per backend.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .defaults import DEFAULT_MODEL, QUICK_DEMO_MODEL
from .errors import RadaError
from .images import scan_image_folder, split_holdout
from .progress import SILENT, Reporter
from .runtimes.bundle import swap
from .runtimes.bundle.json_io import read_json_file
from .runtimes.bundle.layout import ENGINES_DIR, HEAD_FILE
from .runtimes.bundle.ownership import judge, manifest_listing, scan_tree
from .timing import median_ms

# The demo's folder carries this file with our signature and the list of files the demo made; a
# re-run replaces only a folder that has it, and only if every file in it, at any depth, is one the
# demo made (the marker's list, the bundle's manifest, engines `trt` recorded): the bundle owner's
# judgement (runtimes/bundle/ownership.py). A user's own file anywhere in it makes the demo refuse.
MARKER = ".rada-export-demo.json"
SIGNATURE = "rada-export demo folder v1"
IMAGES, BUNDLE = "images", "bundle"
DEMO_ENTRIES = (IMAGES, HEAD_FILE, BUNDLE)


@dataclass
class DemoConfig:
    out: Path = Path("rada-demo")
    model: str = DEFAULT_MODEL
    pretrained: str = "none"  # offline by design: the architecture of every command's default, random weights
    quick: bool = False
    images_per_class: int = 16
    epochs: int = 20
    seed: int = 0


@dataclass
class DemoRow:
    """One configuration run by the runtime."""

    name: str
    backend: str
    precision: str
    tta: str
    accuracy: float
    ms_per_image: float | None


@dataclass
class DemoSummary:
    out: Path
    model: str
    pretrained: str
    random_weights: bool
    files: list[tuple[str, int]]
    parity: list[dict]
    zero_shot_accuracy: float | None
    trained_accuracy: float | None
    rows: list[DemoRow] = field(default_factory=list)
    tensorrt: str = ""
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _marker(out: Path) -> dict | None:
    """The demo's marker record when the folder carries ours, else None."""
    marker = out / MARKER
    if marker.is_symlink() or not marker.is_file():
        return None
    try:
        record = read_json_file(marker, str(marker), "", max_bytes=16 << 20)
    except RadaError:
        return None
    return record if isinstance(record, dict) and record.get("signature") == SIGNATURE else None


def _demo_listing(out: Path, record: dict) -> set[str]:
    """Every file the demo made in ``out``: its marker's list, and the bundle's manifest listing."""
    made = record.get("files")
    listed = {MARKER} | ({rel for rel in made if isinstance(rel, str)} if isinstance(made, list) else set())
    bundle = manifest_listing(out / BUNDLE) or set()
    return listed | {f"{BUNDLE}/{rel}" for rel in bundle}


def _prepare_out(out: Path, config: "DemoConfig") -> None:
    if out.exists() and not out.is_dir():
        raise RadaError(f"output folder {out} is a file", "give a folder for the demo's output", field="out")
    if out.is_dir() and any(out.iterdir()):
        record = _marker(out)
        if record is None:
            raise RadaError(f"output folder {out} exists, is not empty and was not made by the demo",
                            "choose another output folder (the demo replaces only folders it made itself)", field="out")
        swap.recover(out / BUNDLE)  # a bundle swap killed half-way: finish it before judging the folder
        engines = (f"{BUNDLE}/{ENGINES_DIR}",)
        verdict = judge(scan_tree(out, engines), _demo_listing(out, record), engines)
        if not verdict.replaceable:
            raise RadaError(f"output folder {out} was made by the demo but now also holds files the demo did not make "
                            f"({verdict.describe()})", "move those files out of the folder, or choose another output folder",
                            field="out")
        _remove_ours(out, verdict.ours)
    out.mkdir(parents=True, exist_ok=True)
    _write_marker(out, config, [])


def _remove_ours(out: Path, ours: tuple[str, ...]) -> None:
    """Deletes exactly the files judged ours, then the folders they leave empty; the marker last."""
    for rel in sorted(ours, key=lambda r: (r == MARKER, -r.count("/"), r)):
        path = out / rel
        if path.is_dir() and not path.is_symlink():
            try:
                path.rmdir()
            except OSError:
                pass  # not empty: something else is in it, which stays
        elif rel != MARKER:
            path.unlink(missing_ok=True)
    (out / MARKER).unlink(missing_ok=True)


def demo_model(config: "DemoConfig") -> str:
    """The model the demo runs: ``--quick`` replaces the configured one with the tiny built-in model."""
    return QUICK_DEMO_MODEL if config.quick else config.model


def _write_marker(out: Path, config: "DemoConfig", files: list[str]) -> None:
    """The marker, written atomically, listing the files the demo made so far (a run stopped half-way
    leaves a folder the next run may still replace)."""
    record = {"signature": SIGNATURE, "model": demo_model(config), "pretrained": config.pretrained, "files": sorted(files)}
    tmp = out / (MARKER + ".tmp")
    tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
    os.replace(tmp, out / MARKER)


def _made_under(out: Path, folder: str) -> list[str]:
    return [p.relative_to(out).as_posix() for p in sorted((out / folder).rglob("*")) if p.is_file() and not p.is_symlink()]


def run_demo(config: DemoConfig, reporter: Reporter = SILENT) -> DemoSummary:
    """Runs every step; a step that cannot run here (TensorRT without a GPU) is reported, not fatal."""
    from .export.bundle import ExportRequest, export_bundle
    from .synthetic import make_image_folder
    from .train import TrainConfig
    from .train_job import TrainJob, run_train_job

    started = time.perf_counter()
    out = Path(config.out)
    _prepare_out(out, config)
    model = demo_model(config)
    per_class = min(config.images_per_class, 8) if config.quick else config.images_per_class
    notes = []

    reporter.log(f"[bold]1/6[/bold] generating a labelled image set in {out / IMAGES}")
    made: list[str] = []
    try:
        make_image_folder(out / IMAGES, images_per_class=per_class, seed=config.seed)
    finally:
        made += _made_under(out, IMAGES)
        _write_marker(out, config, made)

    reporter.log(f"[bold]2/6[/bold] training a RAda head on frozen {model} features")
    train = run_train_job(TrainJob(
        data=out / IMAGES, out=out / HEAD_FILE, model=model, pretrained=config.pretrained,
        val_fraction=0.25, aug_copies=2, config=TrainConfig(epochs=5 if config.quick else config.epochs, seed=config.seed),
    ), reporter)
    made.append(HEAD_FILE)
    _write_marker(out, config, made)

    reporter.log("[bold]3/6[/bold] exporting and verifying the ONNX bundle (FP32 and FP16)")
    bundle = out / BUNDLE
    exported = export_bundle(ExportRequest(out=bundle, ckpt=out / HEAD_FILE, fp16=True, max_batch=32), reporter)
    parity = [r.to_dict() for r in exported.report.results]

    reporter.log("[bold]4/6[/bold] calibrating INT8 (explicit Q/DQ) on the training images")
    calibrated = _calibrate(bundle, out / IMAGES, 64, config.seed, reporter, notes)
    if calibrated is not None:
        parity += calibrated

    reporter.log("[bold]5/6[/bold] TensorRT engines")
    tensorrt = _tensorrt(bundle, reporter, notes)

    reporter.log("[bold]6/6[/bold] running the device runtime, with and without test-time adaptation")
    val = split_holdout(scan_image_folder(out / IMAGES), 0.25, config.seed)[1]
    rows = _evaluate(bundle, val, tensorrt.startswith("built"), config.quick, config.seed)

    files = sorted((p.relative_to(out).as_posix(), p.stat().st_size) for p in bundle.rglob("*") if p.is_file())
    files.append((HEAD_FILE, (out / HEAD_FILE).stat().st_size))
    return DemoSummary(
        out=out, model=model, pretrained=config.pretrained, random_weights=config.pretrained == "none", files=files,
        parity=parity, zero_shot_accuracy=train.zero_shot_accuracy, trained_accuracy=train.trained_accuracy, rows=rows,
        tensorrt=tensorrt, notes=notes, seconds=time.perf_counter() - started,
    )


def _calibrate(bundle: Path, images: Path, samples: int, seed: int, reporter: Reporter, notes: list[str]) -> list[dict] | None:
    from .calibration.bundle import CalibrateRequest, calibrate_bundle

    # With random weights INT8 may fall below the release thresholds: the demo shows the figures
    # instead of stopping; `rada-export calibrate` enforces them.
    # The fused graph only: it is what the runtime and `trt` use by default, and it halves the time.
    result = calibrate_bundle(CalibrateRequest(bundle=bundle, images=images, samples=samples, seed=seed, graph="model",
                                               accept_degraded=True, holdout=16), reporter)
    rows = []
    for g in result.graphs:
        figures = g.report.figures()
        # "int8" (Q/DQ over FP32, what ONNX Runtime runs) and "int8_fp16" (over FP16, for TensorRT)
        rows.append({"graph": g.key.split(".")[0], "precision": g.key.split(".", 1)[1], "output": "image_features / logits vs FP32",
                     "samples": figures.get("samples"), "mean_cosine": figures.get("mean_cosine"),
                     "min_cosine": figures.get("min_cosine"), "top1_agreement": figures.get("top1_agreement"),
                     "passed": g.report.passed})
    if not result.report.passed:
        notes.append("INT8 is below the release thresholds on this model (accepted for the demo; "
                     "`rada-export calibrate` refuses it without --accept-degraded)")
    return rows


def _tensorrt(bundle: Path, reporter: Reporter, notes: list[str]) -> str:
    from .runtimes.trt_environment import diagnose_environment

    missing, _ = diagnose_environment()
    if missing:
        what = ", ".join(m.component for m in missing)
        notes.append(f"TensorRT engines not built: missing {what} (run `rada-export trt --bundle ...` on the target GPU or Jetson)")
        return f"skipped: missing {what}"
    from .tensorrt.build import BuildRequest, build_engine

    built = []
    # The fused graph in both precisions (what predict uses), and the FP16 encoder for adaptation.
    for graph, precision in (("model", "fp16"), ("image_encoder", "fp16"), ("model", "int8")):
        try:
            result = build_engine(BuildRequest(bundle, graph, precision), reporter=reporter)
            built.append(f"{graph} {precision} ({result.build_seconds:.0f} s)")
        except RadaError as err:
            notes.append(f"TensorRT {graph} {precision} engine not built: {err.problem}")
    return "built " + ", ".join(built) if built else "failed"


def _evaluate(bundle: Path, val, tensorrt: bool, quick: bool, seed: int) -> list[DemoRow]:
    from .runtimes import TTAConfig, load_bundle
    from .runtimes.manifest import read_manifest

    manifest = read_manifest(bundle)
    paths = [str(p) for p in val.paths]
    labels = np.array(val.labels)
    batch = paths[: min(8, len(paths))]
    rows = []
    configs = [("onnxruntime", "cpu", p) for p in ("fp32", "fp16", "int8") if manifest.graph_key("model", p) in manifest.graphs]
    if tensorrt:
        configs += [("tensorrt", "cuda", "fp16"), ("tensorrt", "cuda", "int8")]
    for backend, device, precision in configs:
        rt = load_bundle(bundle, backend=backend, device=device, precision=precision)
        acc = float((rt.predict(paths).labels == labels).mean())
        ms = median_ms(lambda: rt.predict(batch), repeats=3) / len(batch)
        rows.append(DemoRow(f"{rt.backend} {precision}", rt.backend, precision, "off", acc, ms))
    # Test-time adaptation on the FP32 encoder: continual over the stream (batch 1), episodic per image.
    order = np.random.default_rng(seed).permutation(len(paths))
    rt = load_bundle(bundle, backend="onnxruntime", device="cpu", tta=TTAConfig(mode="continual"))
    start = time.perf_counter()
    preds = [int(rt.predict(paths[i], adapt=True).labels[0]) for i in order]
    ms = 1000 * (time.perf_counter() - start) / len(order)
    rows.append(DemoRow("continual TTA", rt.backend, "fp32", "continual", float((np.array(preds) == labels[order]).mean()), ms))
    views = 8 if quick else 16
    subset = order[: min(len(order), 6)]  # views x images encoder passes: the slow part on a CPU
    rt = load_bundle(bundle, backend="onnxruntime", device="cpu", tta=TTAConfig(mode="episodic", views=views), seed=seed)
    start = time.perf_counter()
    preds = [int(rt.predict(paths[i], adapt=True).labels[0]) for i in subset]
    ms = 1000 * (time.perf_counter() - start) / len(subset)
    rows.append(DemoRow(f"episodic TTA ({views} views, {len(subset)} images)", rt.backend, "fp32", "episodic",
                        float((np.array(preds) == labels[subset]).mean()), ms))
    return rows
