"""Calibration images: a seeded selection from a folder, decoded once, cached as one array.

The cache holds uint8 frames at the model's input size (after open_clip's resize and crop, before
normalisation): the fused graph of a bundle with embedded preprocessing takes exactly those, and
``runtimes.preprocess.normalize`` turns them into the float pixels of ``preprocess`` bit for bit, so
one cache serves every graph, at a quarter of the size of float pixels.

The first images of the seeded order form a held-out split for the accuracy report; the next ones
the calibration set. Unreadable files are skipped (and counted) and the next image in the order
takes their place, so a few broken files do not shrink either split.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rada_export.errors import RadaError
from rada_export.images import find_images, open_image
from rada_export.progress import SILENT, Reporter
from rada_export.runtimes.preprocess import frames_uint8, input_size, normalize

CALIBRATION_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
DEFAULT_SAMPLES = 512
DEFAULT_HOLDOUT = 100
# Bump when the cache layout or the decoding changes, so old caches are not read.
CACHE_VERSION = 1


@dataclass(frozen=True)
class SelectionPlan:
    """What to decode: the seeded order of the candidate files and how many of each split to fill."""

    order: tuple[Path, ...]
    samples: int  # calibration images wanted
    holdout: int  # held-out images wanted


@dataclass
class CalibrationSet:
    """Decoded frames, N x H x W x 3 uint8, for calibration and for the held-out report."""

    calibration: np.ndarray
    holdout: np.ndarray
    calibration_files: list[str]
    holdout_files: list[str]
    skipped: list[str]  # unreadable files met while filling the splits
    requested: int
    seed: int
    images_dir: str
    cache_path: Path | None = None
    from_cache: bool = False
    decoded: int = 0  # files decoded by this call (0 when the cache answered)
    notes: list[str] = field(default_factory=list)

    @property
    def samples(self) -> int:
        return len(self.calibration)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rada-export" / "calibration"


def candidate_files(images_dir: str | os.PathLike) -> list[Path]:
    """Calibration candidates under ``images_dir`` (recursive), sorted, so the seed alone fixes the order."""
    images_dir = Path(images_dir)
    return [p for p in find_images(images_dir, recursive=True) if p.suffix.lower() in CALIBRATION_SUFFIXES]


def plan_selection(files: list[Path], samples: int, holdout: int, seed: int) -> SelectionPlan:
    """A seeded order of ``files``; the held-out split shrinks to a fifth of small folders."""
    if samples < 1:
        raise RadaError(f"samples must be at least 1, got {samples}", f"pass samples={DEFAULT_SAMPLES} (the default)",
                        field="samples")
    if holdout < 1:
        raise RadaError(f"the held-out split must hold at least 1 image, got {holdout}", f"use the default of {DEFAULT_HOLDOUT}",
                        field="holdout")
    order = [files[i] for i in np.random.default_rng(seed).permutation(len(files))]
    if len(files) < samples + holdout:
        holdout = min(holdout, max(1, len(files) // 5))
    return SelectionPlan(tuple(order), samples, holdout)


def cache_key(plan: SelectionPlan, preprocess_cfg: Any, seed: int) -> str:
    """Changes whenever a setting, the preprocessing, or any candidate file (size, time) changes."""
    files = []
    for path in plan.order:
        try:
            st = path.stat()
            files.append([str(path.resolve()), st.st_size, st.st_mtime_ns])
        except OSError:
            files.append([str(path), -1, -1])
    payload = {
        "version": CACHE_VERSION, "seed": seed, "samples": plan.samples, "holdout": plan.holdout,
        "preprocess": _plain(preprocess_cfg), "files": files,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def _plain(cfg: Any) -> Any:
    if is_dataclass(cfg):
        return asdict(cfg)
    if isinstance(cfg, dict):
        return cfg
    return {k: getattr(cfg, k) for k in ("size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color") if hasattr(cfg, k)}


def decode_frame(path: Path, preprocess_cfg: Any) -> np.ndarray | None:
    """One image as a uint8 H x W x 3 frame at the input size, or None when it cannot be read."""
    img = open_image(path)
    if img is None:
        return None
    try:
        return frames_uint8(img, preprocess_cfg)[0]
    except RadaError:
        return None


def build_calibration_set(
    images_dir: str | os.PathLike,
    preprocess_cfg: Any,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    holdout: int = DEFAULT_HOLDOUT,
    cache_dir: str | os.PathLike | None = None,
    reporter: Reporter = SILENT,
    decode: Callable[[Path, Any], np.ndarray | None] = decode_frame,
) -> CalibrationSet:
    """The held-out and calibration frames for ``images_dir``, from the cache when it has them.

    ``cache_dir`` defaults to ``$XDG_CACHE_HOME/rada-export/calibration`` (``~/.cache/...``).
    ``decode`` reads one file (a parameter so that tests can count the decodes).
    """
    images_dir = Path(images_dir)
    input_size(preprocess_cfg)  # validates the configuration before any work
    files = candidate_files(images_dir)
    if not files:
        raise RadaError(
            f"image folder {images_dir} holds no images ({', '.join(CALIBRATION_SUFFIXES)}, searched recursively)",
            "pass a folder of real images like those the model will see (a few hundred is enough)",
        )
    plan = plan_selection(files, samples, holdout, seed)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = cache_key(plan, preprocess_cfg, seed)
    cached = read_cache(cache_dir, key)
    if cached is not None:
        cached.images_dir = str(images_dir)
        return cached
    result = _decode_plan(plan, preprocess_cfg, reporter, decode, seed, images_dir)
    result.cache_path = write_cache(cache_dir, key, result)
    return result


def _decode_plan(plan: SelectionPlan, cfg: Any, reporter: Reporter, decode, seed: int, images_dir: Path) -> CalibrationSet:
    wanted = plan.holdout + plan.samples
    frames: list[np.ndarray] = []
    used: list[str] = []
    skipped: list[str] = []
    decoded = 0
    with reporter.task("decoding calibration images", min(wanted, len(plan.order))) as advance:
        for path in plan.order:
            if len(frames) == wanted:
                break
            frame = decode(path, cfg)
            decoded += 1
            if frame is None:
                skipped.append(str(path))
                continue
            frames.append(frame)
            used.append(str(path))
            advance(1)
    readable = len(frames)
    if readable == 0:
        raise RadaError(
            f"none of the {len(skipped)} image file(s) could be read",
            "pass a folder of readable JPEG, PNG, WebP or BMP images",
        )
    if readable < 2:
        raise RadaError(
            "only 1 readable image: calibration needs at least 2 (one to calibrate on, one held out for the report)",
            "add more images to the folder (a few hundred is best)",
        )
    holdout = plan.holdout if readable >= wanted else min(plan.holdout, max(1, readable // 5))
    notes = []
    n_calib = readable - holdout
    if n_calib < plan.samples:
        notes.append(f"{n_calib} calibration images instead of the {plan.samples} asked for "
                     f"(the folder has {readable} readable images, {holdout} held out for the report)")
    if skipped:
        notes.append(f"skipped {len(skipped)} unreadable file(s)")
    stacked = np.stack(frames)
    return CalibrationSet(
        calibration=stacked[holdout:], holdout=stacked[:holdout],
        calibration_files=used[holdout:], holdout_files=used[:holdout], skipped=skipped,
        requested=plan.samples, seed=seed, images_dir=str(images_dir), decoded=decoded, notes=notes,
    )


def _cache_paths(cache_dir: Path, key: str) -> tuple[Path, Path]:
    return cache_dir / f"{key}.npy", cache_dir / f"{key}.json"


def read_cache(cache_dir: Path, key: str) -> CalibrationSet | None:
    """The cached set for ``key``, or None when absent or unreadable (then it is rebuilt)."""
    array_path, meta_path = _cache_paths(cache_dir, key)
    if not (array_path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        frames = np.load(array_path, allow_pickle=False)
        n_hold = int(meta["holdout"])
        if frames.ndim != 4 or frames.dtype != np.uint8 or len(frames) != n_hold + len(meta["calibration_files"]):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return CalibrationSet(
        calibration=frames[n_hold:], holdout=frames[:n_hold],
        calibration_files=list(meta["calibration_files"]), holdout_files=list(meta["holdout_files"]),
        skipped=list(meta["skipped"]), requested=int(meta["requested"]), seed=int(meta["seed"]),
        images_dir=str(meta.get("images_dir", "")), cache_path=array_path, from_cache=True, decoded=0,
        notes=list(meta.get("notes", [])),
    )


def write_cache(cache_dir: Path, key: str, result: CalibrationSet) -> Path | None:
    """Writes the array, then its metadata (each atomically); a cache that cannot be written is only a note."""
    array_path, meta_path = _cache_paths(cache_dir, key)
    frames = np.concatenate([result.holdout, result.calibration])
    meta = {
        "version": CACHE_VERSION, "holdout": len(result.holdout), "calibration_files": result.calibration_files,
        "holdout_files": result.holdout_files, "skipped": result.skipped, "requested": result.requested,
        "seed": result.seed, "images_dir": result.images_dir, "notes": list(result.notes),
    }
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(array_path, lambda fh: np.save(fh, frames, allow_pickle=False))
        # The metadata goes last: read_cache needs both, so a crash in between leaves no half cache.
        _atomic_write(meta_path, lambda fh: fh.write(json.dumps(meta, indent=1).encode()))
    except OSError as err:
        result.notes.append(f"calibration cache not written ({err.strerror or err}): the next run decodes again")
        return None
    return array_path


def _atomic_write(path: Path, write: Callable[[Any], Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_pixels(frames: np.ndarray, preprocess_cfg: Any) -> np.ndarray:
    """float32 N x 3 x H x W, equal to ``runtimes.preprocess.preprocess`` of the same images."""
    return normalize(np.ascontiguousarray(frames), preprocess_cfg)
