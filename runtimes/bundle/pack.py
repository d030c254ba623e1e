"""A device bundle: a copy of a bundle with only the precisions and graphs a device runs.

The packed bundle is a bundle in its own right (its own manifest and checksums), so every command
and ``load_bundle`` read it as they read an exported one. Every byte written comes from the source's
verified bytes (verified.py), and the result is opened and verified again before it is renamed into
place; the output folder is replaced only when it is empty or a bundle of ours (ownership.py), and
never when it holds a file we did not make. TensorRT engines that ``rada-export trt`` recorded come
along when the graph they were built from does (their bytes checked against the sha256 their
description records), so a device that built engines can slim its own bundle and keep them; other
engines (another graph, or not recorded) stay behind.

Standard library and numpy only, so a device can pack the bundle it was given.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Optional

from rada_export.errors import RadaError

from . import swap
from .layout import GRAPH_NAMES, MANIFEST_NAME, PRECISIONS, TEXT_ENCODER, VARIANT_PRECISION
from .json_io import parse_json
from .layout import ENGINE_SUFFIX
from .manifest import Manifest, write_manifest
from .ownership import FILE, bundle_verdict, engine_is_recorded, engine_json_rel, is_engine_path, scan_tree
from .verified import VerifiedBundle, files_outside_graphs


@dataclass(frozen=True)
class PackRequest:
    """``precisions``/``graphs``: what to keep (None: all the bundle has). The text encoder runs in FP32
    only (``set_classes``), so its FP32 graph is kept whenever the text encoder is."""

    bundle: Path
    out: Path
    precisions: Optional[tuple[str, ...]] = None
    graphs: Optional[tuple[str, ...]] = None
    force: bool = False


@dataclass(frozen=True)
class PackResult:
    out: Path
    graphs: tuple[str, ...]  # the manifest keys kept, e.g. ("model.fp16", "text_encoder")
    dropped: tuple[str, ...]  # the manifest keys left out
    files: int  # files written, the manifest included
    bytes: int  # their total size
    source_bytes: int  # the size of the files the source manifest lists, its manifest included
    engines: tuple[str, ...] = ()  # recorded TensorRT engines carried along

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "out": str(self.out)}


def parse_list(text: Optional[str], allowed: Iterable[str], field: str) -> Optional[tuple[str, ...]]:
    """``"fp16,int8"`` -> ("fp16", "int8"); None or blank -> None (everything)."""
    if text is None or not text.strip():
        return None
    values = tuple(dict.fromkeys(v.strip().lower() for v in text.split(",") if v.strip()))
    return check_names(values, allowed, field)


def check_names(values: Iterable[str], allowed: Iterable[str], field: str) -> tuple[str, ...]:
    allowed = tuple(allowed)
    values = tuple(values)
    unknown = [v for v in values if v not in allowed]
    if unknown or not values:
        noun = field[:-1] if field.endswith("s") else field  # the request field is plural, a value singular
        raise RadaError(f"unknown {noun} {', '.join(map(repr, unknown)) or '(none given)'}",
                        f"use one or more of {', '.join(allowed)}, separated by commas", field=field)
    return values


def select_graphs(manifest: Manifest, precisions: Optional[Iterable[str]], graphs: Optional[Iterable[str]]) -> list[str]:
    """The manifest keys a pack keeps (pure): each graph asked for, in each precision asked for."""
    precisions = set(PRECISIONS if precisions is None else precisions)
    graphs = set(GRAPH_NAMES if graphs is None else graphs)
    kept = []
    for key in sorted(manifest.graphs):
        name, _, variant = key.partition(".")
        precision = VARIANT_PRECISION[variant]
        if name in graphs and (precision in precisions or (name == TEXT_ENCODER and precision == "fp32")):
            kept.append(key)
    return kept


def pack_bundle(req: PackRequest, progress: Callable[[str], None] | None = None) -> PackResult:
    """Writes the device bundle of ``req`` at ``req.out`` (temporary folder, then one rename)."""
    precisions = None if req.precisions is None else check_names(req.precisions, PRECISIONS, "precision")
    graphs = None if req.graphs is None else check_names(req.graphs, GRAPH_NAMES, "graph")
    source, out = Path(req.bundle), Path(req.out)
    _check_out(source, out, req.force)
    bundle = VerifiedBundle.open(source, check_graphs=False)
    try:
        manifest = bundle.manifest
        kept = select_graphs(manifest, precisions, graphs)
        if not any(k.partition(".")[0] != TEXT_ENCODER for k in kept):
            have = ", ".join(sorted(manifest.graphs))
            raise RadaError(f"bundle {source} has no image graph in the precisions and graphs asked for (it has: {have})",
                            "ask for a precision and graph the bundle has (see its manifest.json), or export or "
                            "calibrate that precision first", field="precision")
        staging = swap.new_staging(out)
        try:
            files = _write_files(bundle, manifest, kept, staging, progress)
            engines = _copy_engines(source, set(files), staging)
            packed = dataclasses.replace(manifest, graphs={k: manifest.graphs[k] for k in kept}, files=files)
            write_manifest(staging, packed)
            check = VerifiedBundle.open(staging)  # the result read back as any reader will read it
            try:
                check.verify()
            finally:
                check.close()
            written = sum((staging / rel).stat().st_size for rel in [*files, *engines, MANIFEST_NAME])
            swap.replace_dir(staging, out)
        except BaseException as err:
            swap.discard(staging)
            if isinstance(err, OSError):
                raise RadaError(f"could not write the device bundle beside {out} ({err.strerror or err})",
                                "free some space or choose another output folder", field="out") from err
            raise
        source_bytes = sum(_size(source / rel) for rel in [*manifest.files, MANIFEST_NAME])
    finally:
        bundle.close()
    return PackResult(out, tuple(kept), tuple(sorted(set(manifest.graphs) - set(kept))), len(files) + len(engines) + 1,
                      written, source_bytes, tuple(e for e in engines if e.endswith(ENGINE_SUFFIX)))


def _write_files(bundle: VerifiedBundle, manifest: Manifest, kept: list[str], staging: Path,
                 progress: Callable[[str], None] | None) -> dict[str, str]:
    """Copies the kept graphs (with the external data each names) and every file that belongs to no
    graph (head, text features, classes, tokenizer), each from its verified bytes."""
    wanted = files_outside_graphs(manifest)
    for key in kept:
        entry = manifest.graphs[key]
        model, external = bundle.graph_bytes(entry.file)
        folder = PurePosixPath(entry.file).parent
        _write(staging, entry.file, model)
        for location, data in external.items():
            _write(staging, (folder / location).as_posix(), data)
        wanted += [entry.file] + [(folder / loc).as_posix() for loc in external]
        if progress is not None:
            progress(entry.file)
    for rel in wanted:
        if not (staging / rel).exists():
            _write(staging, rel, bundle.read_buffer(rel))
    return {rel: manifest.files[rel] for rel in sorted(set(wanted))}  # bytes verified against these very digests


def _copy_engines(source: Path, kept_files: set[str], staging: Path) -> list[str]:
    """The engines ``trt`` recorded (ownership.engine_is_recorded) and built from a kept graph file,
    each with its description; an engine whose bytes changed since the scan is refused, not copied."""
    import hashlib

    tree = scan_tree(source)
    by_rel = {e.rel: e for e in tree.entries}
    copied = []
    for entry in tree.entries:
        if entry.kind != FILE or not is_engine_path(entry.rel):
            continue
        description = by_rel.get(engine_json_rel(entry.rel))
        if not engine_is_recorded(entry, description):
            continue
        meta = parse_json(description.text, description.rel, "")
        if meta.get("onnx_file") not in kept_files:
            continue
        data = (source / entry.rel).read_bytes()
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise RadaError(f"{source / entry.rel} changed while it was being packed", "run the pack again")
        _write(staging, entry.rel, data)
        _write(staging, description.rel, description.text)
        copied += [entry.rel, description.rel]
    return copied


def _write(root: Path, rel: str, data) -> None:
    path = root.joinpath(*PurePosixPath(rel).parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "xb") as fh:  # a fresh staging folder: a name twice would be our bug, never an overwrite
        fh.write(data)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _check_out(source: Path, out: Path, force: bool) -> None:
    src, dst = Path(os.path.realpath(source)), Path(os.path.realpath(out))  # links resolved: one folder, one name
    if src == dst or src in dst.parents or dst in src.parents:
        raise RadaError(f"the device bundle {out} would be inside the bundle it packs ({source}), or contain it",
                        "choose an output folder outside the source bundle", field="out")
    if os.path.islink(out):
        raise RadaError(f"output folder {out} is a symbolic link", "give a plain folder path", field="out")
    if out.exists() and not out.is_dir():
        raise RadaError(f"output folder {out} is a file", "give a folder path for the device bundle", field="out")
    if not (out.is_dir() and any(out.iterdir())):
        return
    if not force:
        raise RadaError(f"output folder {out} already exists and is not empty",
                        "pass force=True to replace a bundle there, or choose another output folder", field="out")
    verdict = bundle_verdict(out)
    if verdict is None:
        raise RadaError(f"output folder {out} is not a rada-export bundle (no {MANIFEST_NAME} of ours), so force=True "
                        "will not replace it", "choose another output folder", field="out")
    if not verdict.replaceable:
        raise RadaError(f"output folder {out} holds files that are not part of its bundle ({verdict.describe()}), so "
                        "force=True will not replace it", "move those files out of the folder, or choose another output folder",
                        field="out")
