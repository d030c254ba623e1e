"""Image folders: finding, reading and sampling labelled images.

Shared by training (ImageFolder layout, one sub-folder per class) and calibration (any folder,
recursive). Unreadable files are skipped and counted, never fatal on their own.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .errors import RadaError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def find_images(root: str | Path, recursive: bool = True) -> list[Path]:
    root = Path(root)
    if not root.exists():
        raise RadaError(f"image folder {root} does not exist", "pass an existing folder of images")
    if not root.is_dir():
        raise RadaError(f"{root} is not a folder", "pass a folder of images")
    paths = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in paths if is_image_file(p))


def open_image(path: Path) -> Image.Image | None:
    """The decoded image in its own mode, or None when it cannot be decoded.

    The mode is kept because open_clip resizes before converting to RGB (resizing RGBA or palette
    images after conversion gives other pixels); its transforms do the conversion.
    """
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None


@dataclass
class LabelledImages:
    paths: list[Path]
    labels: list[int]
    class_names: list[str]
    skipped: list[Path] = field(default_factory=list)


def scan_image_folder(root: str | Path) -> LabelledImages:
    """ImageFolder layout: each sub-folder is a class, its images (recursively) are its samples."""
    root = Path(root)
    if not root.exists():
        raise RadaError(f"data folder {root} does not exist", "pass a folder with one sub-folder of images per class")
    if not root.is_dir():
        raise RadaError(f"data path {root} is not a folder", "pass a folder with one sub-folder of images per class")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise RadaError(f"data folder {root} has no class sub-folders", "put each class's images in a sub-folder named after the class")
    paths, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        images = find_images(class_dir)
        if not images:
            raise RadaError(
                f"class folder {class_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})",
                "add images to it or remove the folder",
            )
        paths += images
        labels += [label] * len(images)
    return LabelledImages(paths, labels, [d.name.replace("_", " ") for d in class_dirs])


def sample_shots(data: LabelledImages, shots: int, seed: int = 0) -> LabelledImages:
    """A seeded few-shot subset: `shots` images of every class."""
    if shots <= 0:
        raise RadaError(f"shots must be positive, got {shots}", "pass e.g. shots=16, or leave shots out to use every image",
                        field="shots")
    rng = random.Random(seed)
    paths, labels = [], []
    for k, name in enumerate(data.class_names):
        members = [p for p, y in zip(data.paths, data.labels) if y == k]
        if len(members) < shots:
            fewest = min(data.labels.count(j) for j in range(len(data.class_names)))
            raise RadaError(f"shots={shots} but class {name!r} has only {len(members)} images",
                            f"pass shots={fewest} or fewer", field="shots")
        chosen = sorted(rng.sample(members, shots))
        paths += chosen
        labels += [k] * shots
    return LabelledImages(paths, labels, data.class_names, data.skipped)


def split_holdout(data: LabelledImages, fraction: float, seed: int = 0) -> tuple[LabelledImages, LabelledImages]:
    """A stratified, seeded train / held-out split (at least one held-out image per class when possible)."""
    rng = random.Random(seed)
    train_p, train_y, val_p, val_y = [], [], [], []
    for k in range(len(data.class_names)):
        members = [p for p, y in zip(data.paths, data.labels) if y == k]
        rng.shuffle(members)
        n_val = min(len(members) - 1, max(1, round(fraction * len(members)))) if len(members) > 1 else 0
        val_p += members[:n_val]
        val_y += [k] * n_val
        train_p += members[n_val:]
        train_y += [k] * (len(members) - n_val)
    return (
        LabelledImages(train_p, train_y, data.class_names),
        LabelledImages(val_p, val_y, data.class_names),
    )
