"""Verified opening: the bytes a runtime runs are the bytes whose checksum it verified.

``VerifiedBundle.open`` reads the manifest once and opens (pins) every file it lists, without
reading them. Each later ``read(rel)`` reads that file's bytes from the pinned descriptor, hashes
exactly those bytes, and hands them over only when the hash is the manifest's: graphs go to ONNX
Runtime and OpenVINO from memory, and the head, text features and tokenizer are parsed from memory.
A bundle replaced at its path after ``open`` (``onnx --force``, ``calibrate``: both swap whole
folders) cannot change what is read: the pinned descriptors still reach the files that were there,
which the old manifest vouches for. A file changed in place, which no rada-export command does, is
refused by its hash: one clear error, never another bundle's bytes.

Files are verified one by one, when they are first read, so a caller verifies only what it opens:
``load_bundle`` checks the small files up front (``files_outside_graphs``: head, text features,
classes, tokenizer) and each graph when its runner is made, from the very bytes it hands the
backend, so a device never hashes the graphs it does not run. ``verify`` checks a list, or all.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from pathlib import Path, PurePosixPath
from typing import Iterable

from rada_export.errors import RadaError

from .layout import MANIFEST_NAME, external_data_name
from .manifest import MAX_MANIFEST_BYTES, Manifest, check_bundle_paths, check_not_interrupted, manifest_from_bytes
from .paths import check_relative, confine

_FIX = "copy the bundle again in full, or re-export it"
_CHUNK = 1 << 24


class VerifiedBundle(os.PathLike):
    """A bundle whose manifest was read once and whose listed files are pinned open.

    It is also an ``os.PathLike`` of the bundle folder, so functions that take a bundle path accept
    it and read verified bytes from it (``read_head_bundle``, ``load_tokenizer``). Thread-safe:
    reads use ``pread``, which has no shared file position.
    """

    def __init__(self, path: Path, manifest: Manifest, manifest_bytes: bytes, fds: dict[str, int | None],
                 reasons: dict[str, str]):
        self.path = path
        self.manifest = manifest
        self.manifest_bytes = manifest_bytes
        self._fds = fds
        self._reasons = reasons  # rel -> why it could not be pinned (missing, not a regular file)
        self._lock = threading.Lock()

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __truediv__(self, rel: str) -> Path:
        return self.path / rel

    def __repr__(self) -> str:
        return f"VerifiedBundle({str(self.path)!r}, {len(self._fds)} files)"

    @classmethod
    def open(cls, path: str | os.PathLike, check_graphs: bool = True) -> "VerifiedBundle":
        """Reads and checks the manifest (as ``read_manifest``) and pins every file it lists."""
        bundle = Path(path)
        check_not_interrupted(bundle)
        if not bundle.is_dir():
            raise RadaError(f"bundle {bundle} is not a folder", "pass the folder written by `rada-export onnx --out`")
        manifest_path = confine(bundle, MANIFEST_NAME, MANIFEST_NAME)
        fd, reason = _pin(manifest_path)
        if fd is None:
            raise RadaError(f"{bundle} has no {MANIFEST_NAME} ({reason})", "pass the folder written by `rada-export onnx --out`")
        try:
            raw = bytes(_pread_all(fd, min(os.fstat(fd).st_size, MAX_MANIFEST_BYTES + 1), manifest_path))
        finally:
            os.close(fd)
        manifest = manifest_from_bytes(raw, manifest_path)
        check_bundle_paths(bundle, manifest, check_graphs)
        fds: dict[str, int | None] = {}
        reasons: dict[str, str] = {}
        try:
            for rel in manifest.files:
                fds[rel], why = _pin(confine(bundle, rel, f"files entry {rel!r}"))
                if why:
                    reasons[rel] = why
        except BaseException:
            _close_all(fds)
            raise
        return cls(bundle, manifest, raw, fds, reasons)

    def read(self, rel: str, max_bytes: int | None = None) -> bytes:
        """The verified bytes of a file the manifest lists; RadaError when it is missing, over
        ``max_bytes``, or not the bytes the manifest vouches for."""
        return bytes(self.read_buffer(rel, max_bytes))

    def read_buffer(self, rel: str, max_bytes: int | None = None) -> bytearray:
        """As ``read``, without the copy into ``bytes`` (for gigabytes of external data)."""
        check_relative(rel, f"file {rel!r}", f"bundle {self.path}")
        if rel not in self.manifest.files:
            raise RadaError(f"bundle {self.path}: {rel} is not listed in its manifest, so nothing vouches for it",
                            "re-export the bundle with `rada-export onnx`")
        fd = self._fds.get(rel)
        if fd is None:
            raise RadaError(f"bundle {self.path} failed its integrity check; missing: {rel}"
                            + (f" ({self._reasons[rel]})" if rel in self._reasons else ""), _FIX)
        size = os.fstat(fd).st_size
        if max_bytes is not None and size > max_bytes:
            raise RadaError(f"bundle {self.path}: {rel} is {size} bytes, more than the {max_bytes} it may hold",
                            "re-export the bundle with `rada-export onnx`")
        data = _pread_all(fd, size, self.path / rel)
        if hashlib.sha256(data).hexdigest() != self.manifest.files[rel]:
            raise RadaError(f"bundle {self.path} failed its integrity check; checksum mismatch (corrupt or modified): {rel}",
                            _FIX)
        return data

    def graph_bytes(self, rel: str) -> tuple[bytes, dict[str, bytearray]]:
        """A graph's verified bytes, and the verified bytes of every external-data file it names (keyed
        by the location as the graph writes it, relative to the graph's folder)."""
        from .manifest import check_external_data_listed
        from .paths import external_data_locations

        model = self.read(rel)
        locations = external_data_locations(model)
        check_external_data_listed(self.manifest, rel, locations, f"bundle {self.path}")
        folder = PurePosixPath(rel).parent
        return model, {loc: self.read_buffer((folder / loc).as_posix()) for loc in locations}

    def still_pinned(self, rels: Iterable[str]) -> bool:
        """Whether the files at these paths are still the ones pinned at ``open`` (same device and
        inode): for backends that can only open a path, checked around the opening."""
        for rel in rels:
            fd = self._fds.get(rel)
            try:
                at_path, pinned = os.stat(self.path / rel), os.fstat(fd) if fd is not None else None
            except OSError:
                return False
            if pinned is None or (at_path.st_dev, at_path.st_ino) != (pinned.st_dev, pinned.st_ino):
                return False
        return True

    def verify(self, only: Iterable[str] | None = None) -> None:
        """Hashes the pinned files (all, or ``only``) and names every missing or altered one at once."""
        wanted = list(self.manifest.files) if only is None else [rel for rel in only if rel in self.manifest.files]
        missing, altered = [], []
        for rel in wanted:
            fd = self._fds.get(rel)
            if fd is None:
                missing.append(rel)
            elif _sha256_fd(fd) != self.manifest.files[rel]:
                altered.append(rel)
        if missing or altered:
            parts = ([f"missing: {', '.join(missing)}"] if missing else []) + (
                [f"checksum mismatch (corrupt or modified): {', '.join(altered)}"] if altered else [])
            raise RadaError(f"bundle {self.path} failed its integrity check; " + "; ".join(parts), _FIX)

    def close(self) -> None:
        with self._lock:
            _close_all(self._fds)
            self._fds = {}

    def __del__(self) -> None:
        try:
            _close_all(self._fds)
        except Exception:  # interpreter shutdown
            pass


def graph_files(manifest: Manifest) -> set[str]:
    """The files that belong to a graph: each graph file and its external data (as the manifest records
    it, or the ``<graph>.onnx.data`` name the exporter writes), wherever the manifest lists them."""
    owned = set()
    for entry in manifest.graphs.values():
        owned.update(f for f in (entry.file, entry.external_data, external_data_name(entry.file)) if f)
    return owned & set(manifest.files)


def files_outside_graphs(manifest: Manifest) -> list[str]:
    """The listed files no graph owns (head, text features, classes, tokenizer): small, read at load."""
    owned = graph_files(manifest)
    return [rel for rel in manifest.files if rel not in owned]


def _pin(path: Path) -> tuple[int | None, str]:
    """An open descriptor on a regular file (O_NONBLOCK: a FIFO planted in a bundle must not hang the
    open), or None and why not."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return None, "no such file"
    except OSError as err:
        return None, err.strerror or str(err)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None, "not a regular file"
    return fd, ""


def _pread_all(fd: int, size: int, where: Path) -> bytearray:
    buf = bytearray(size)
    view = memoryview(buf)
    done = 0
    try:
        while done < size:
            n = os.preadv(fd, [view[done : done + _CHUNK]], done)
            if n == 0:
                break
            done += n
    except OSError as err:
        raise RadaError(f"cannot read {where} ({err.strerror or err})", _FIX) from None
    view.release()
    if done < size:
        del buf[done:]
    return buf


def _sha256_fd(fd: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    while True:
        block = os.pread(fd, _CHUNK, offset)
        if not block:
            return digest.hexdigest()
        digest.update(block)
        offset += len(block)


def _close_all(fds: dict[str, int | None]) -> None:
    for fd in fds.values():
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
