"""`rada-export calibrate`: INT8 Q/DQ graphs written into an existing bundle, with their report.

Order of work: check the bundle (manifest, requested graphs, checksums, a writable folder) before
touching any image; decode (or read from the cache) the calibration and held-out images;
quantize each graph into a staging folder beside the bundle; measure INT8 against FP32; and only
when the figures pass (or ``accept_degraded``) assemble the new bundle in that staging folder (the
old bundle's files hard-linked, the INT8 files and the new manifest added) and swap it in
(runtimes/replace.py): at every instant the old or the new bundle loads at the path, and the
bundle's own folder is never written into.

Nothing is deleted that calibrate did not make: the only files of the old bundle left out of the
new one are earlier INT8 graphs of ours (``<graph>.int8.onnx`` and its ``.data``) that the new
ones replace. Every other entry is carried over (hard links), and the bundle's tree is read with
the bundle owner's ``scan_tree``, which refuses a folder it cannot list instead of leaving its
files out of the new bundle.
"""

from __future__ import annotations

import os
import shutil
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rada_export.errors import RadaError, VerificationError
from rada_export.progress import SILENT, Reporter
from rada_export.runtimes.bundle import layout
from rada_export.runtimes.bundle import manifest as mf
from rada_export.runtimes.bundle import swap as replace
from rada_export.runtimes.bundle.ownership import DIR, FILE, LINK, Tree, scan_tree

from .dataset import DEFAULT_HOLDOUT, DEFAULT_SAMPLES, CalibrationSet, build_calibration_set
from . import int8_fp16
from .int8 import METHODS, QuantizedGraph, QuantRecipe, progress_steps, quantize_graph
from .report import AccuracyReport, CalibrationReport, accuracy_report, head_logits

GRAPH_CHOICES = ("model", "image_encoder", "all")
_GRAPHS = {"model": (mf.FUSED,), "image_encoder": (mf.IMAGE_ENCODER,), "all": (mf.FUSED, mf.IMAGE_ENCODER)}
TEXT_FEATURES = layout.TEXT_FEATURES
SCRATCH = ".rada-int8-scratch"  # inside the staging folder, gone before the swap

# The smallest held-out sample whose report can vouch for INT8. The top-1 gate is 95 %: each held-out
# image weighs 100/n %, so below 20 images one disagreement already fails the gate and none passes
# it, and the report cannot tell an INT8 graph that agrees 95 % of the time from one that agrees
# 80 % of the time (the chance that 10 images all agree at 80 % is still 11 %).
MIN_HELD_OUT = 20
# The fewest classes the FP32 graph must predict on the held-out images (or all of the bundle's
# classes, when it has fewer): on images all predicted as one class, top-1 agreement only asks
# whether INT8 keeps that class on top, never whether it swaps two classes, which is how INT8
# ranges fitted to a narrow sample fail.
MIN_CLASSES = 2


@dataclass
class CalibrateRequest:
    bundle: Path
    images: Path
    samples: int = DEFAULT_SAMPLES
    method: str = "minmax"
    graph: str = "all"
    seed: int = 0
    accept_degraded: bool = False
    holdout: int = DEFAULT_HOLDOUT
    cache_dir: Path | None = None  # None: ~/.cache/rada-export/calibration
    batch_size: int = 8
    percentile: float = 99.999
    force: bool = False  # replace INT8 graphs the bundle already has


@dataclass
class GraphOutcome:
    key: str  # manifest key, e.g. "model.int8"
    file: str  # relative to the bundle
    layers: int  # layers quantized (Linear, and Conv in convolutional towers)
    report: AccuracyReport


@dataclass
class CalibrateResult:
    bundle: Path
    data: CalibrationSet
    graphs: list[GraphOutcome]
    report: CalibrationReport
    manifest: mf.Manifest
    recipe: QuantRecipe
    notes: list[str] = field(default_factory=list)
    sample: "SampleCheck | None" = None

    def to_dict(self) -> dict:
        return {
            "bundle": str(self.bundle),
            "calibration": dataset_summary(self.data),
            "sample": self.sample.to_dict() if self.sample else None,
            "recipe": self.recipe.describe(),
            "graphs": {g.key: {"file": g.file, "layers": g.layers, **g.report.figures()} for g in self.graphs},
            "passed": self.report.passed,
            "notes": self.notes,
        }


def dataset_summary(data: CalibrationSet) -> dict:
    return {
        "images": data.images_dir, "samples": data.samples, "requested_samples": data.requested,
        "held_out": len(data.holdout), "skipped": len(data.skipped), "seed": data.seed,
        "from_cache": data.from_cache, "cache": str(data.cache_path) if data.cache_path else None,
    }


def _check_request(req: CalibrateRequest) -> None:
    if req.graph not in GRAPH_CHOICES:
        raise RadaError(f"unknown graph {req.graph!r}", f"use {' or '.join(f'graph={g!r}' for g in GRAPH_CHOICES)}",
                        field="graph")
    if req.method not in METHODS:
        raise RadaError(f"unknown calibration method {req.method!r}", f"use {' or '.join(f'method={m!r}' for m in METHODS)}",
                        field="method")
    if req.samples < 1:
        raise RadaError(f"samples must be at least 1, got {req.samples}", f"pass samples={DEFAULT_SAMPLES} (the default)",
                        field="samples")
    if req.holdout < 1:
        raise RadaError(f"holdout must be at least 1, got {req.holdout}", f"pass holdout={DEFAULT_HOLDOUT} (the default)",
                        field="holdout")
    if req.batch_size < 1:
        raise RadaError(f"the calibration batch size must be at least 1, got {req.batch_size}", "use the default of 8",
                        field="batch_size")
    if req.cache_dir is not None and Path(req.cache_dir).exists() and not Path(req.cache_dir).is_dir():
        raise RadaError(f"the calibration cache folder {req.cache_dir} is a file", "give a folder (it is created if missing), "
                        "or leave cache_dir out for ~/.cache/rada-export/calibration", field="cache_dir")
    if not 0 < req.percentile <= 100:
        raise RadaError(f"the percentile must lie in (0, 100], got {req.percentile}", "use the default of 99.999",
                        field="percentile")


def source_entries(bundle: Path, manifest: mf.Manifest, graph: str) -> dict[str, mf.GraphEntry]:
    """The FP32 graphs to quantize, checked against the manifest's checksums."""
    entries = {}
    for name in _GRAPHS[graph]:
        if name not in manifest.graphs:
            have = ", ".join(sorted(manifest.graphs)) or "none"
            raise RadaError(f"bundle {bundle} has no FP32 {name} graph to calibrate (it has: {have})",
                            f"re-export the bundle with `rada-export onnx`, or pick another graph ({', '.join(GRAPH_CHOICES)})",
                            field="graph")
        entries[name] = manifest.graphs[name]
    needed = [p for e in entries.values() for p in e.paths]
    unlisted = [p for p in needed if p not in manifest.files]
    if unlisted:
        raise RadaError(f"bundle {bundle}: the manifest lists no checksum for {', '.join(unlisted)}",
                        "re-export the bundle with `rada-export onnx`")
    mf.verify_checksums(bundle, manifest, only=needed)
    return entries


def _staging_dir(bundle: Path) -> Path:
    try:
        return replace.new_staging(bundle)
    except RadaError as err:
        raise RadaError(f"cannot write the calibrated bundle beside {bundle}: {err.problem}",
                        "make the folder that holds the bundle writable, or copy the bundle somewhere writable "
                        "and calibrate the copy") from err


def _report_inputs(bundle: Path, manifest: mf.Manifest) -> tuple[np.ndarray | None, Path | None]:
    """Text features and the FP32 head, for graphs that output features only (checksummed)."""
    if TEXT_FEATURES not in manifest.files:
        return None, None
    head = manifest.graphs.get(mf.HEAD)
    only = [TEXT_FEATURES] + (head.paths if head else [])
    mf.verify_checksums(bundle, manifest, only=only)
    return np.load(bundle / TEXT_FEATURES), (bundle / head.file if head else None)


def calibrate_bundle(req: CalibrateRequest, reporter: Reporter = SILENT) -> CalibrateResult:
    """Writes ``<graph>.int8.onnx`` (Q/DQ over FP32, for ONNX Runtime) and ``<graph>.int8_fp16.onnx``
    (the same Q/DQ over FP16, for TensorRT) for the requested graphs into the bundle, with manifest entries.

    Raises RadaError for bad input (nothing written) and VerificationError, carrying the
    CalibrationReport, when INT8 falls below the thresholds and ``accept_degraded`` is False.
    """
    _check_request(req)
    bundle = Path(req.bundle)
    replace.recover(bundle)  # leftovers of a killed run
    manifest = mf.read_manifest(bundle)
    _carried_tree(bundle)  # an unreadable folder or a FIFO inside: refused before any work
    sources = source_entries(bundle, manifest, req.graph)
    _check_replacing(bundle, manifest, sources, req.force)
    text_features, head_path = _report_inputs(bundle, manifest)
    if text_features is None and mf.IMAGE_ENCODER in sources:
        raise RadaError(f"bundle {bundle} has no {TEXT_FEATURES}: the image encoder's report needs it for its logits",
                        "re-export the bundle with `rada-export onnx`")
    staging = _staging_dir(bundle)
    scratch = staging / SCRATCH
    scratch.mkdir()
    try:
        data = build_calibration_set(req.images, manifest.preprocess, req.samples, req.seed, req.holdout,
                                     req.cache_dir, reporter)
        for note in data.notes:
            reporter.log(f"[yellow]note:[/yellow] {note}")
        # Before quantizing (the long part): is the held-out sample big and varied enough to judge INT8?
        first = next(iter(sources.values()))
        sample = SampleCheck(held_out=len(data.holdout), classes=predicted_classes(
            bundle / first.file, data.holdout, manifest, text_features, head_path),
            bundle_classes=len(manifest.class_names))
        if sample.problems and not req.accept_degraded:
            raise RadaError(f"the held-out sample cannot vouch for INT8: {'; '.join(sample.problems)}",
                            sample.fix(), field="images")
        recipe = QuantRecipe(method=req.method, percentile=req.percentile, batch_size=req.batch_size)
        staged: dict[str, QuantizedGraph] = {}
        outcomes = []
        for name, entry in sources.items():
            key = f"{name}.int8"
            steps = progress_steps(data.samples, recipe)
            with reporter.task(f"calibrating {name} ({req.method})", steps) as advance:
                q = quantize_graph(bundle / entry.file, scratch / f"{key}.onnx", data.calibration,
                                   manifest.preprocess, recipe, progress=advance)
            staged[key] = q
            report_batches = 2 * -(-len(data.holdout) // recipe.batch_size)
            with reporter.task(f"checking {key} against FP32", report_batches) as advance:
                report = accuracy_report(
                    key, bundle / entry.file, q.path, data.holdout, q.input_name, q.wants_frames, manifest.preprocess,
                    text_features=text_features, head_path=head_path, logit_scale=manifest.logit_scale,
                    batch_size=recipe.batch_size, on_batch=advance)
            outcomes.append(GraphOutcome(key=key, file=f"{key}.onnx", layers=len(q.layers), report=report))
            # The same Q/DQ graph with its other parts in FP16: the one TensorRT engines build from.
            key16 = f"{name}.{int8_fp16.SUFFIX}"
            with reporter.task(f"converting {key} to FP16 for TensorRT", 1) as advance:
                path16 = scratch / f"{key16}.onnx"
                q16 = dataclasses.replace(q, path=path16, external_data=int8_fp16.convert_file(q.path, path16))
                advance(1)
            staged[key16] = q16
            with reporter.task(f"checking {key16} against FP32", report_batches) as advance:
                report16 = accuracy_report(
                    key16, bundle / entry.file, q16.path, data.holdout, q.input_name, q.wants_frames, manifest.preprocess,
                    text_features=text_features, head_path=head_path, logit_scale=manifest.logit_scale,
                    batch_size=recipe.batch_size, on_batch=advance)
            outcomes.append(GraphOutcome(key=key16, file=f"{key16}.onnx", layers=len(q.layers), report=report16))
        full = CalibrationReport([o.report for o in outcomes])
        if not full.passed and not req.accept_degraded:
            raise VerificationError(full, f"INT8 below the thresholds, nothing written: {full.describe()}")
        notes = list(data.notes)
        if sample.problems:
            notes.append(f"written on a sample too small to judge INT8 (accepted as degraded): {'; '.join(sample.problems)}")
        if not full.passed:
            notes.append(f"written despite failing the thresholds (--accept-degraded): {full.describe()}")
        updated = _updated_manifest(manifest, sources, scratch, staged, outcomes, data, recipe, req)
        _assemble(bundle, _carried_tree(bundle), staging, scratch, staged, manifest, updated)
        replace.replace_dir(staging, bundle)
    except OSError as err:  # disk full or permissions while staging: the bundle itself is untouched
        replace.discard(staging)
        raise RadaError(f"could not write the INT8 graphs into {bundle} ({err.strerror or err})",
                        "free disk space or fix the folder's permissions and rerun; the bundle was left as it was") from err
    except BaseException:
        replace.discard(staging)
        raise
    return CalibrateResult(bundle=bundle, data=data, graphs=outcomes, report=full, manifest=updated,
                           recipe=recipe, notes=notes, sample=sample)


@dataclass(frozen=True)
class SampleCheck:
    """How many held-out images and distinct classes (FP32 top-1) the INT8 report rests on."""

    held_out: int
    classes: int
    bundle_classes: int

    @property
    def min_classes(self) -> int:
        return min(MIN_CLASSES, max(1, self.bundle_classes))

    @property
    def problems(self) -> list[str]:
        found = []
        if self.held_out < MIN_HELD_OUT:
            found.append(f"{self.held_out} held-out image(s), fewer than the {MIN_HELD_OUT} a 95 % top-1 gate needs")
        if self.classes < self.min_classes:
            found.append(f"the FP32 graph predicts {self.classes} class(es) on them, fewer than {self.min_classes}")
        return found

    def fix(self) -> str:
        return (f"calibrate on a folder with at least {5 * MIN_HELD_OUT} images of several classes (a fifth of a small folder "
                f"is held out; holdout={MIN_HELD_OUT} or more), or pass accept_degraded=True to write INT8 anyway")

    def to_dict(self) -> dict:
        return {"held_out": self.held_out, "classes": self.classes, "min_held_out": MIN_HELD_OUT,
                "min_classes": self.min_classes, "problems": self.problems}


def predicted_classes(graph: Path, frames: np.ndarray, manifest: mf.Manifest, text_features: np.ndarray | None,
                      head_path: Path | None, batch_size: int = 8) -> int:
    """Distinct top-1 classes of the FP32 ``graph`` on ``frames`` (the image encoder's through the head)."""
    from rada_export.runtimes.ort_session import create_session

    from .dataset import to_pixels

    session = create_session(graph, "cpu", "fp32")
    image_input = session.get_inputs()[0]
    names = [o.name for o in session.get_outputs()]
    wanted = "logits" if "logits" in names else "image_features"
    outputs = []
    for start in range(0, len(frames), batch_size):
        chunk = frames[start:start + batch_size]
        feed = np.ascontiguousarray(chunk) if image_input.type == "tensor(uint8)" else to_pixels(chunk, manifest.preprocess)
        outputs.append(session.run([wanted], {image_input.name: feed})[0])
    values = np.concatenate(outputs)
    if wanted == "image_features":
        if text_features is None:
            return 0
        values, _ = head_logits(values, text_features, head_path, manifest.logit_scale)
    return len(set(np.argmax(values, axis=1).tolist()))


def _check_replacing(bundle: Path, manifest: mf.Manifest, sources: dict[str, mf.GraphEntry], force: bool) -> None:
    """INT8 graphs already in the bundle are replaced only when asked: they may rest on a better sample."""
    existing = [key for name in sources for key in (f"{name}.int8", f"{name}.{int8_fp16.SUFFIX}") if key in manifest.graphs]
    if existing and not force:
        earlier = manifest.calibration.get(existing[0], {})
        told = f" (calibrated on {earlier['samples']} images, {earlier.get('held_out', '?')} held out)" if "samples" in earlier else ""
        raise RadaError(f"{bundle} already has INT8 graphs {', '.join(existing)}{told}",
                        "pass force=True to replace them, or calibrate a copy of the bundle")


def _staged_files(q: QuantizedGraph) -> list[str]:
    return [q.path.name] + ([q.external_data.name] if q.external_data else [])


def _updated_manifest(
    manifest: mf.Manifest, sources: dict[str, mf.GraphEntry], staging: Path, staged: dict[str, QuantizedGraph],
    outcomes: list[GraphOutcome], data: CalibrationSet, recipe: QuantRecipe, req: CalibrateRequest,
) -> mf.Manifest:
    """A copy of the manifest with the INT8 entries, their calibration record and checksums."""
    import onnxruntime

    updated = mf.Manifest.from_dict(manifest.to_dict())
    for outcome in outcomes:
        q = staged[outcome.key]
        old = updated.graphs.get(outcome.key)
        if old is not None:  # an earlier INT8 graph's files leave the manifest with it
            for rel in (old.file, old.external_data):
                if rel in _own_int8_names():
                    updated.files.pop(rel, None)
        # Q/DQ insertion keeps the graph's inputs and outputs, so they are the FP32 graph's.
        source = sources[outcome.key.split(".")[0]]
        over_fp16 = outcome.key.endswith(f".{int8_fp16.SUFFIX}")
        updated.graphs[outcome.key] = mf.GraphEntry(
            file=q.path.name, precision="int8", inputs=dict(source.inputs), outputs=dict(source.outputs),
            input_dtypes=dict(source.input_dtypes),
            external_data=q.external_data.name if q.external_data else None,
            notes=f"{int8_fp16.NOTES}; {recipe.describe()}" if over_fp16
            else f"explicit Q/DQ over FP32 (for ONNX Runtime): {recipe.describe()}",
        )
        updated.files.update(mf.checksum_files(staging, _staged_files(q)))
        updated.calibration[outcome.key] = {
            "method": recipe.method, **({"percentile": recipe.percentile} if recipe.method == "percentile" else {}),
            "samples": data.samples, "requested_samples": data.requested, "seed": data.seed,
            "images": str(Path(data.images_dir).resolve()), "skipped": len(data.skipped),
            "held_out": len(data.holdout), "quantized_layers": outcome.layers,
            "quantizer": f"onnxruntime {onnxruntime.__version__}", "recipe": recipe.describe(),
            "accepted_degraded": bool(req.accept_degraded and not outcome.report.passed),
            "report": outcome.report.figures(),
        }
    updated.files = dict(sorted(updated.files.items()))
    return updated


def _own_int8_names() -> set[str]:
    """The only names calibrate ever writes, and so the only old files it may leave out."""
    return {name for g in mf.GRAPH_NAMES for variant in layout.INT8_VARIANTS
            for name in (layout.graph_file(g, variant), layout.external_data_name(layout.graph_file(g, variant)))}


def _carried_tree(bundle: Path) -> Tree:
    """Every entry of the bundle, to carry into the new one; RadaError for a folder that cannot be
    listed (its files would be lost) or an entry that is neither file, folder nor link."""
    tree = scan_tree(bundle, engine_dirs=())
    odd = [e.rel for e in tree.entries if e.kind not in (FILE, DIR, LINK)]
    if odd:
        raise RadaError(f"bundle {bundle} holds {', '.join(odd[:3])}, which is neither a file, a folder nor a link",
                        "move it out of the bundle, then rerun")
    return tree


def _assemble(bundle: Path, tree: Tree, staging: Path, scratch: Path, staged: dict[str, QuantizedGraph],
              old: mf.Manifest, new: mf.Manifest) -> None:
    """The new bundle in ``staging``: every entry of the old one (hard links, so nothing is copied or
    lost: engines and anything else the user keeps there come along), the staged INT8 files, and
    the new manifest. Old INT8 files of ours that the new manifest no longer lists stay behind."""
    fresh = {name for q in staged.values() for name in _staged_files(q)}
    dropped = {rel for rel in _own_int8_names() if rel in old.files and rel not in new.files}
    for entry in tree.entries:  # sorted by path: a folder comes before what it holds
        src, dst = bundle / entry.rel, staging / entry.rel
        if entry.rel in (mf.MANIFEST_NAME, SCRATCH) or entry.rel in fresh or entry.rel in dropped:
            continue
        if entry.kind == LINK:
            os.symlink(os.readlink(src), dst)
        elif entry.kind == DIR:
            dst.mkdir()
        else:
            try:
                os.link(src, dst)
            except OSError:  # a filesystem without hard links
                shutil.copy2(src, dst)
    for name in sorted(fresh):
        os.replace(scratch / name, staging / name)
    shutil.rmtree(scratch)
    mf.write_manifest(staging, new)
