"""Seeded TPT views of an image (Pillow and numpy only).

TPT (Shu et al. 2022) adapts on augmented views of one test image: random resized crops with a
random horizontal flip, the original first. The runtime preprocesses the views like any image
afterwards, so the views are square crops resized to one side: the preprocessing's resize then
leaves their content whole, as torchvision's RandomResizedCrop does.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
from PIL import Image

from rada_export.errors import RadaError

Seed = Union[int, np.random.Generator]

# torchvision's RandomResizedCrop defaults, which TPT uses for its ImageNet-style views.
DEFAULT_SCALE = (0.08, 1.0)
DEFAULT_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_ATTEMPTS = 10


@dataclass(frozen=True)
class Crop:
    """A crop box in pixels (left, top, width, height) and whether the view is mirrored."""

    left: int
    top: int
    width: int
    height: int
    flip: bool

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.left, self.top, self.left + self.width, self.top + self.height)


def random_crop(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = DEFAULT_SCALE,
    ratio: tuple[float, float] = DEFAULT_RATIO,
) -> Crop:
    """A random crop covering ``scale`` of the area with aspect ratio (w/h) in ``ratio``, drawn
    log-uniformly, plus a coin flip for mirroring.

    As in RandomResizedCrop, a few draws are tried; when none fits (very elongated images) the
    largest centred crop with a ratio inside ``ratio`` is taken.
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(_ATTEMPTS):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return Crop(left, top, w, h, bool(rng.random() < 0.5))
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    w, h = max(1, min(w, width)), max(1, min(h, height))
    return Crop((width - w) // 2, (height - h) // 2, w, h, bool(rng.random() < 0.5))


def random_views(
    image: Image.Image,
    n: int,
    seed: Seed,
    scale: tuple[float, float] = DEFAULT_SCALE,
    *,
    ratio: tuple[float, float] = DEFAULT_RATIO,
    size: Optional[int] = None,
    resample: int = Image.Resampling.BILINEAR,
) -> list[Image.Image]:
    """``n`` views of ``image``: the original first, then ``n - 1`` random resized crops, each
    mirrored with probability 1/2.

    Args:
        image: the test image.
        n: number of views, the original included (TPT uses 64; the default TTA config 16).
        seed: an int, or a numpy Generator to draw from (it advances); the same seed gives the
            same views.
        scale: the range of the crop's share of the image area (RandomResizedCrop's default).
        ratio: the range of the crop's aspect ratio, width / height.
        size: the side of the square crops; by default the image's shorter side, so the views
            are as sharp as the original after the runtime's resize.
        resample: Pillow's filter for resizing the crops.
    """
    if not isinstance(image, Image.Image):
        raise RadaError(f"image must be a PIL image, got {type(image).__name__}", "open it with PIL.Image.open")
    if not (isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 1):
        raise RadaError(f"n={n!r} views is invalid", "pass an integer >= 1 (the original counts as one)")
    _check_range("scale", scale, upper=1.0)
    _check_range("ratio", ratio, upper=None)
    width, height = image.size
    if width < 1 or height < 1:
        raise RadaError(f"image is empty ({width} x {height})", "pass an image with pixels")
    side = min(width, height) if size is None else size
    if not (isinstance(side, numbers.Integral) and not isinstance(side, bool) and side >= 1):
        raise RadaError(f"size={size!r} is invalid", "pass a positive integer side, or None")
    rng = _generator(seed)
    views = [image.copy()]
    for _ in range(n - 1):
        crop = random_crop(width, height, rng, scale, ratio)
        view = image.resize((int(side), int(side)), resample=resample, box=crop.box)
        if crop.flip:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        views.append(view)
    return views


def _generator(seed: Seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool) and seed >= 0:
        return np.random.default_rng(int(seed))
    raise RadaError(f"seed={seed!r} is invalid", "pass a non-negative int or a numpy Generator")


def _check_range(name: str, bounds: tuple[float, float], upper: Optional[float]) -> None:
    ok = (
        isinstance(bounds, (tuple, list))
        and len(bounds) == 2
        and all(isinstance(b, numbers.Real) and not isinstance(b, bool) and math.isfinite(b) for b in bounds)
        and 0.0 < bounds[0] <= bounds[1]
        and (upper is None or bounds[1] <= upper)
    )
    if not ok:
        limit = f" and at most {upper}" if upper is not None else ""
        raise RadaError(f"{name}={bounds!r} is invalid", f"pass (low, high) with 0 < low <= high{limit}")
