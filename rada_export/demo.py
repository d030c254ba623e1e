"""`rada-export demo`: the whole job, offline, in one command.

Makes a small labelled image set, trains a head, exports and verifies the bundle, calibrates INT8,
builds TensorRT engines where TensorRT and a GPU exist, runs the device runtime with and without
test-time adaptation, and sums it all up: files, sizes, parity, accuracy, latency per backend.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import RadaError
from .images import scan_image_folder, split_holdout
from .progress import SILENT, Reporter
from .timing import median_ms

# The demo's folder carries this file with our signature; a re-run replaces only a folder that has
# it, and only the entries the demo makes (a user's own files in it make the demo refuse).
MARKER = ".rada-export-demo.json"
SIGNATURE = "rada-export demo folder v1"
DEMO_ENTRIES = ("images", "head.safetensors", "bundle")


@dataclass
class DemoConfig:
    out: Path = Path("rada-demo")
    model: str = "ViT-B-32"
    pretrained: str = "none"
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


def _is_demo_folder(out: Path) -> bool:
    marker = out / MARKER
    try:
        if marker.is_symlink() or marker.stat().st_size > 4096:
            return False
        return json.loads(marker.read_text(encoding="utf-8")).get("signature") == SIGNATURE
    except (OSError, ValueError, AttributeError):
        return False


def _ours(name: str) -> bool:
    # The bundle's own staging folders and their markers (runtimes/replace.py) belong to the demo too.
    return name in DEMO_ENTRIES or name == MARKER or name.startswith(".bundle.rada-")


def _prepare_out(out: Path, config: "DemoConfig") -> None:
    if out.exists() and not out.is_dir():
        raise RadaError(f"output folder {out} is a file", "give a folder for the demo's output", field="out")
    if out.is_dir() and any(out.iterdir()):
        if not _is_demo_folder(out):
            raise RadaError(f"output folder {out} exists, is not empty and was not made by the demo",
                            "choose another output folder (the demo replaces only folders it made itself)", field="out")
        foreign = sorted(p.name for p in out.iterdir() if not _ours(p.name))
        if foreign:
            raise RadaError(f"output folder {out} was made by the demo but now also holds {', '.join(foreign[:5])}",
                            "move those files out of the folder, or choose another output folder", field="out")
        for entry in sorted(out.iterdir(), key=lambda p: p.name == MARKER):  # the marker goes last
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps({"signature": SIGNATURE, "model": config.model,
                                          "pretrained": config.pretrained}) + "\n", encoding="utf-8")


def run_demo(config: DemoConfig, reporter: Reporter = SILENT) -> DemoSummary:
    """Runs every step; a step that cannot run here (TensorRT without a GPU) is reported, not fatal."""
    from .export.bundle import ExportRequest, export_bundle
    from .synthetic import make_image_folder
    from .train import TrainConfig
    from .train_job import TrainJob, run_train_job

    started = time.perf_counter()
    out = Path(config.out)
    _prepare_out(out, config)
    model = "rada-tiny-ViT" if config.quick else config.model
    per_class = min(config.images_per_class, 8) if config.quick else config.images_per_class
    notes = []

    reporter.log(f"[bold]1/6[/bold] generating a labelled image set in {out / 'images'}")
    make_image_folder(out / "images", images_per_class=per_class, seed=config.seed)

    reporter.log(f"[bold]2/6[/bold] training a RAda head on frozen {model} features")
    train = run_train_job(TrainJob(
        data=out / "images", out=out / "head.safetensors", model=model, pretrained=config.pretrained,
        val_fraction=0.25, aug_copies=2, config=TrainConfig(epochs=5 if config.quick else config.epochs, seed=config.seed),
    ), reporter)

    reporter.log("[bold]3/6[/bold] exporting and verifying the ONNX bundle (FP32 and FP16)")
    bundle = out / "bundle"
    exported = export_bundle(ExportRequest(out=bundle, ckpt=out / "head.safetensors", fp16=True, max_batch=32), reporter)
    parity = [r.to_dict() for r in exported.report.results]

    reporter.log("[bold]4/6[/bold] calibrating INT8 (explicit Q/DQ) on the training images")
    calibrated = _calibrate(bundle, out / "images", 64, config.seed, reporter, notes)
    if calibrated is not None:
        parity += calibrated

    reporter.log("[bold]5/6[/bold] TensorRT engines")
    tensorrt = _tensorrt(bundle, reporter, notes)

    reporter.log("[bold]6/6[/bold] running the device runtime, with and without test-time adaptation")
    val = split_holdout(scan_image_folder(out / "images"), 0.25, config.seed)[1]
    rows = _evaluate(bundle, val, tensorrt.startswith("built"), config.quick, config.seed)

    files = sorted((p.relative_to(out).as_posix(), p.stat().st_size) for p in bundle.rglob("*") if p.is_file())
    files.append(("head.safetensors", (out / "head.safetensors").stat().st_size))
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
