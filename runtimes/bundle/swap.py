"""Crash-safe replacement of a bundle folder, and recovery from a replacement that was killed.

A new bundle is written to a sibling folder ``.<name>.rada-<token>``; beside it, and before it, we
create its marker file ``.<name>.rada-<token>.owned`` (our signature, the target, our pid). The
marker is what lets a later run recognise the folder as ours: nothing without one is ever moved or
deleted, and a marker is removed only after its folder is gone.

The swap itself is one ``renameat2(RENAME_EXCHANGE)`` on Linux: at every instant the path holds
either the old or the new bundle, and the old one ends up at the staging name, still under its
marker. Where the exchange is unavailable, two renames are used; a crash between them leaves the
path empty and both bundles beside it under markers, and ``recover`` (called by the loader and by
the next run) puts the new one in place.

Standard library only: the device runtime calls ``recover`` when it reads a bundle.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sys
from pathlib import Path

from rada_export.errors import RadaError

SIGNATURE = "rada-export owned folder v1"
_SUFFIX = ".owned"
# Test hook: a real process kills itself (SIGKILL) at this step, so tests can check every state a
# crash can leave (tests/test_trust.py). Steps in order of the replacement:
KILL_ENV = "RADA_EXPORT_TEST_KILL_AT"
NO_EXCHANGE_ENV = "RADA_EXPORT_TEST_NO_EXCHANGE"  # test hook: take the two-rename path
STEPS_EXCHANGE = ("staged", "swapped", "old-removed")
STEPS_RENAMES = ("staged", "old-marked", "old-aside", "new-placed", "old-removed")


def _kill_point(step: str) -> None:
    if os.environ.get(KILL_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def _marker_path(folder: Path) -> Path:
    return folder.with_name(folder.name + _SUFFIX)


def _write_marker(marker: Path, record: dict, create: bool) -> None:
    data = (json.dumps(record) + "\n").encode()
    if create:  # O_EXCL: never adopt a file someone else made
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, marker)


def _read_marker(marker: Path) -> dict | None:
    """The marker's record when it carries our signature, else None."""
    try:
        if marker.is_symlink() or not marker.is_file() or marker.stat().st_size > 4096:
            return None
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("signature") != SIGNATURE:
        return None
    return record


def _owned(target: Path, role: str) -> tuple[Path, Path]:
    """A fresh sibling name for ``target`` and its marker file (created now; the folder is not)."""
    for _ in range(100):
        folder = target.with_name(f".{target.name}.rada-{secrets.token_hex(4)}")
        marker = _marker_path(folder)
        if os.path.lexists(folder):
            continue
        try:
            _write_marker(marker, {"signature": SIGNATURE, "target": target.name, "folder": folder.name, "role": role,
                                   "state": "writing", "pid": os.getpid(), "host": socket.gethostname()}, create=True)
        except FileExistsError:
            continue
        return folder, marker
    raise RadaError(f"could not make a temporary folder beside {target}", "remove stale .*.rada-* entries there")


def new_staging(target: str | os.PathLike) -> Path:
    """An empty sibling folder for the new version of ``target``, under our marker."""
    target = Path(os.path.abspath(target))
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        if not os.access(parent, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "Permission denied", str(parent))
        folder, _ = _owned(target, "new")
        folder.mkdir()
    except OSError as err:
        raise RadaError(f"cannot write beside {target} in {parent} ({err.strerror or err})",
                        "make that folder writable, or choose another location") from err
    return folder


def discard(staging: Path) -> None:
    """Removes a staging folder of ours (after a failure)."""
    marker = _marker_path(staging)
    if _read_marker(marker) is not None:
        _remove_owned(staging, marker)


def _remove_owned(folder: Path, marker: Path) -> None:
    if folder.is_symlink():  # a link moved aside: drop the link, never what it points at
        folder.unlink()
    elif folder.exists():
        shutil.rmtree(folder)
    _kill_point("old-removed")
    marker.unlink(missing_ok=True)


def _remove_old(folder: Path, marker: Path) -> None:
    """After the swap the new bundle is in place: failing to delete the old one (a read-only folder
    inside it) is not the user's problem now; its marker stays, and the next run retries."""
    try:
        _remove_owned(folder, marker)
    except OSError:
        pass


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swaps two paths (Linux renameat2); False where the system cannot."""
    if sys.platform != "linux" or os.environ.get(NO_EXCHANGE_ENV):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:  # glibc < 2.28
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # kernel or filesystem without it
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(staging: Path, target: str | os.PathLike) -> None:
    """Puts the finished ``staging`` folder at ``target``; an old ``target`` is removed once replaced."""
    target = Path(os.path.abspath(target))
    marker = _marker_path(staging)
    record = _read_marker(marker)
    if record is None:
        raise RuntimeError(f"{staging} is not a staging folder of ours")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp-style privacy is wrong for a bundle meant to be shared
    _write_marker(marker, {**record, "state": "complete"}, create=False)
    _kill_point("staged")
    if not os.path.lexists(target):
        os.rename(staging, target)
        marker.unlink()
        return
    if _exchange(staging, target):
        _kill_point("swapped")
        _remove_old(staging, marker)  # the old bundle now sits at the staging name, under its marker
        return
    aside, aside_marker = _owned(target, "old")
    _write_marker(aside_marker, {**_read_marker(aside_marker), "state": "complete"}, create=False)
    _kill_point("old-marked")
    os.rename(target, aside)
    _kill_point("old-aside")
    os.rename(staging, target)
    marker.unlink()
    _kill_point("new-placed")
    _remove_old(aside, aside_marker)


def _alive(record: dict) -> bool:
    if record.get("host") != socket.gethostname():
        return True  # another machine's process (a shared folder): cannot tell, so leave it alone
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return True  # our own staging, still being written
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def leftovers(target: str | os.PathLike) -> list[tuple[Path, Path, dict]]:
    """(folder, marker, record) of every marked sibling of ``target`` left by a process now dead."""
    target = Path(os.path.abspath(target))
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.rada-[0-9a-f]{{8}}{re.escape(_SUFFIX)}$")
    try:
        names = os.listdir(target.parent)
    except OSError:
        return []
    found = []
    for name in sorted(names):
        if not pattern.match(name):
            continue
        marker = target.parent / name
        record = _read_marker(marker)
        folder = marker.with_name(name[: -len(_SUFFIX)])
        if record is None or record.get("target") != target.name or record.get("folder") != folder.name:
            continue
        if not _alive(record):
            found.append((folder, marker, record))
    return found


def interrupted(target: str | os.PathLike) -> bool:
    """Whether ``target`` is missing while a killed replacement left a complete bundle beside it (a
    reader's question: the next writer puts that bundle back)."""
    target = Path(os.path.abspath(target))
    if os.path.lexists(target):
        return False
    return any(f[2].get("state") == "complete" and f[0].is_dir() for f in leftovers(target))


def recover(target: str | os.PathLike) -> list[str]:
    """Finishes what a killed replacement left: puts a complete bundle back at an empty ``target``
    (the new one first), then removes the other marked leftovers. Returns what it did."""
    target = Path(os.path.abspath(target))
    found = leftovers(target)
    if not found:
        return []
    done = []
    if not os.path.lexists(target):
        complete = [f for f in found if f[2].get("state") == "complete" and f[0].is_dir() and not f[0].is_symlink()
                    and (f[0] / "manifest.json").is_file()]
        complete.sort(key=lambda f: f[2].get("role") != "new")
        if complete:
            folder, marker, _ = complete[0]
            try:
                os.rename(folder, target)
                marker.unlink()
                found.remove(complete[0])
                done.append(f"restored {target} from {folder.name}")
            except OSError:
                return done  # a read-only location: leave everything as it is for a writable run
    for folder, marker, _ in found:
        try:
            _remove_owned(folder, marker)
            done.append(f"removed {folder.name}")
        except OSError:
            pass  # read-only, or in use: the next writable run tries again
    return done
