"""Which files in a folder are ours, and so whether a command may replace the folder.

Ours are exactly: the manifest, the files it lists, and the TensorRT engines that ``rada-export trt``
wrote and recorded, each with the JSON beside it. An engine is recorded when that JSON (the
``<graph>.<precision>.json`` beside ``<graph>.<precision>.engine``) is a valid engine description
(engine_layout.validate_meta) whose ``engine_file`` is the engine's name and whose ``engine_sha256``
is the sha256 of the engine's bytes, as ``rada-export trt`` writes it. Anything else, at any depth,
is the user's: a file, an empty folder, a symbolic link (we never write links), a FIFO; one such
entry makes the answer "no".

``judge`` is a pure function of a ``Tree`` (what ``scan_tree`` read from the disk), so it is tested
on trees built in memory as well as on real folders. ``scan_tree`` refuses a folder it cannot list
(an unreadable sub-folder would otherwise look empty, and its files would be lost).
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Collection, Iterable

from rada_export.errors import RadaError

from ..engine_layout import validate_meta
from .json_io import parse_json
from .layout import ENGINE_SUFFIX, ENGINES_DIR, MANIFEST_NAME

MAX_ENGINE_JSON_BYTES = 1 << 20
FILE, DIR, LINK, OTHER = "file", "dir", "link", "other"


@dataclass(frozen=True)
class Entry:
    """One entry of a folder tree, by its POSIX path relative to the tree's root."""

    rel: str
    kind: str  # file, dir, link (never followed) or other (FIFO, socket, device)
    sha256: str | None = None  # engine files only: what a recorded engine's JSON must name
    text: bytes | None = None  # engine JSON files only: their content


@dataclass(frozen=True)
class Tree:
    entries: tuple[Entry, ...]

    @classmethod
    def of(cls, entries: Iterable[Entry]) -> "Tree":
        return cls(tuple(sorted(entries, key=lambda e: e.rel)))


@dataclass(frozen=True)
class Verdict:
    """What a folder holds: ``ours`` may be replaced; ``foreign`` is the user's."""

    ours: tuple[str, ...]
    foreign: tuple[str, ...]

    @property
    def replaceable(self) -> bool:
        return not self.foreign

    def describe(self, limit: int = 5) -> str:
        shown = ", ".join(self.foreign[:limit])
        return shown + (f" and {len(self.foreign) - limit} more" if len(self.foreign) > limit else "")


def is_engine_path(rel: str, engine_dirs: Collection[str] = (ENGINES_DIR,)) -> bool:
    """``<engines>/<environment>/<name>.engine``: where ``rada-export trt`` writes engines."""
    path = PurePosixPath(rel)
    return (path.name.endswith(ENGINE_SUFFIX) and len(path.parts) >= 3
            and path.parent.parent.as_posix() in engine_dirs)


def engine_json_rel(engine_rel: str) -> str:
    path = PurePosixPath(engine_rel)
    return path.with_name(path.name[: -len(ENGINE_SUFFIX)] + ".json").as_posix()


def our_engine_description(description: Entry | None) -> dict | None:
    """The engine description ``rada-export trt`` writes, read from ``description``; None when it is not one (pure)."""
    if description is None or description.kind != FILE or description.text is None:
        return None
    try:
        return validate_meta(parse_json(description.text, description.rel, ""), description.rel)
    except RadaError:
        return None


def engine_is_recorded(engine: Entry, description: Entry | None) -> bool:
    """Whether ``description`` records ``engine`` as one ``rada-export trt`` built (pure)."""
    if engine.kind != FILE or engine.sha256 is None:
        return False
    meta = our_engine_description(description)
    return meta is not None and meta.get("engine_file") == PurePosixPath(engine.rel).name \
        and meta.get("engine_sha256") == engine.sha256


def judge(tree: Tree, listed: Collection[str], engine_dirs: Collection[str] = (ENGINES_DIR,)) -> Verdict:
    """Ours and foreign entries of ``tree``, given the files a manifest (or a marker) ``listed``.

    Pure. ``listed`` holds paths relative to the tree's root, the manifest's own included; engines are
    looked for under each of ``engine_dirs``. A folder is ours when an owned file lies under it; an
    empty one is the user's (we never leave empty folders).
    """
    by_rel = {e.rel: e for e in tree.entries}
    ours: set[str] = set()
    for entry in tree.entries:
        if entry.kind != FILE:
            continue
        if entry.rel in listed:
            ours.add(entry.rel)
        elif is_engine_path(entry.rel, engine_dirs):
            description = engine_json_rel(entry.rel)
            if engine_is_recorded(entry, by_rel.get(description)):
                ours.update((entry.rel, description))
    owned_dirs = {parent.as_posix() for rel in ours for parent in PurePosixPath(rel).parents if parent.as_posix() != "."}
    foreign = []
    for entry in tree.entries:
        if entry.rel in ours or (entry.kind == DIR and entry.rel in owned_dirs):
            continue
        if entry.kind == DIR and any(e.rel.startswith(entry.rel + "/") for e in tree.entries):
            continue  # a folder with the user's files in it: those files are named instead
        if entry.kind == DIR and (entry.rel in engine_dirs or PurePosixPath(entry.rel).parent.as_posix() in engine_dirs):
            ours.add(entry.rel)  # an engines folder left empty by a failed build: trt made it
            continue
        foreign.append(entry.rel + ("/" if entry.kind == DIR else ""))
    dirs = {e.rel for e in tree.entries if e.kind == DIR}
    return Verdict(tuple(sorted(ours | (dirs & owned_dirs))), tuple(foreign))


def scan_tree(root: str | os.PathLike, engine_dirs: Collection[str] = (ENGINES_DIR,)) -> Tree:
    """Every entry under ``root`` (links not followed); engines hashed and their JSON read, so that
    ``judge`` can tell recorded engines. RadaError when a folder cannot be listed."""
    root = Path(root)
    entries: list[Entry] = []

    def refuse(err: OSError) -> None:
        where = err.filename or root
        raise RadaError(f"cannot list {where} ({err.strerror or err}): its files would be left out",
                        "make every folder inside readable (or move that folder out), then rerun")

    for folder, dirs, files in os.walk(root, onerror=refuse, followlinks=False):
        rel_dir = Path(folder).relative_to(root)
        for name in sorted(dirs + files):
            path = os.path.join(folder, name)
            rel = (rel_dir / name).as_posix()
            try:
                mode = os.lstat(path).st_mode
            except OSError as err:
                refuse(err)
            if stat.S_ISLNK(mode):
                entries.append(Entry(rel, LINK))
            elif stat.S_ISDIR(mode):
                entries.append(Entry(rel, DIR))
            elif not stat.S_ISREG(mode):
                entries.append(Entry(rel, OTHER))
            elif is_engine_path(rel, engine_dirs):
                entries.append(Entry(rel, FILE, sha256=_sha256(path, refuse)))
            elif rel.endswith(".json") and any(rel.startswith(d + "/") for d in engine_dirs):
                entries.append(Entry(rel, FILE, text=_head(path, MAX_ENGINE_JSON_BYTES, refuse)))
            else:
                entries.append(Entry(rel, FILE))
    return Tree.of(entries)


def _sha256(path: str, refuse) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                digest.update(block)
    except OSError as err:
        refuse(err)
    return digest.hexdigest()


def _head(path: str, limit: int, refuse) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as err:
        refuse(err)
    return None if len(data) > limit else data


def manifest_listing(bundle: str | os.PathLike) -> set[str] | None:
    """The files a bundle's manifest lists, with the manifest itself; None when the folder holds no
    manifest of ours. Lenient on purpose: an older or damaged manifest of ours may still be replaced,
    but only its listed files count as ours."""
    path = Path(bundle) / MANIFEST_NAME
    if path.is_symlink() or not path.is_file():
        return None
    try:
        with open(path, "rb") as fh:
            data = parse_json(fh.read(64 << 20), str(path), "")
    except (OSError, RadaError):
        return None
    if not (isinstance(data, dict) and "schema_version" in data and isinstance(data.get("files"), dict)
            and isinstance(data.get("graphs"), dict)):
        return None
    return {rel for rel in data["files"] if isinstance(rel, str)} | {MANIFEST_NAME}


def bundle_verdict(bundle: str | os.PathLike) -> Verdict | None:
    """The verdict on a bundle folder; None when it is not a bundle of ours at all."""
    listed = manifest_listing(bundle)
    if listed is None:
        return None
    return judge(scan_tree(bundle), listed)
