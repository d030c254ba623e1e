"""A small labelled image set made offline: coloured shapes on noisy backgrounds.

For smoke runs, tests and `rada-export demo`, where no dataset can be downloaded. Each class is a
shape in a colour; position, size, rotation, background and noise vary per image, so the images
are learnable but not identical.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES: tuple[tuple[str, str, tuple[int, int, int]], ...] = (
    ("red circle", "circle", (220, 40, 40)),
    ("green square", "square", (40, 180, 60)),
    ("blue triangle", "triangle", (40, 80, 220)),
    ("yellow star", "star", (230, 210, 40)),
    ("purple ring", "ring", (150, 60, 190)),
    ("orange cross", "cross", (240, 140, 30)),
)


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        corners = 4
        radii = [r] * corners
    elif kind == "triangle":
        corners = 3
        radii = [r] * corners
    else:  # star
        corners = 10
        radii = [r if i % 2 == 0 else r * 0.45 for i in range(corners)]
    return [
        (cx + radii[i] * math.cos(angle + 2 * math.pi * i / corners), cy + radii[i] * math.sin(angle + 2 * math.pi * i / corners))
        for i in range(corners)
    ]


def draw_image(kind: str, colour: tuple[int, int, int], size: int, rng: np.random.Generator) -> Image.Image:
    background = tuple(int(v) for v in rng.integers(60, 200, 3))
    img = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(img)
    r = size * rng.uniform(0.18, 0.32)
    cx, cy = rng.uniform(r, size - r, 2)
    angle = rng.uniform(0, 2 * math.pi)
    fill = tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in colour)
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(2, int(r / 3)))
    elif kind == "cross":
        w = r / 3
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    else:
        draw.polygon(_polygon(kind, cx, cy, r, angle), fill=fill)
    noise = rng.normal(0, 8, (size, size, 3))
    pixels = np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def make_image_folder(
    root: str | Path,
    images_per_class: int = 12,
    num_classes: int = len(CLASSES),
    size: int = 96,
    seed: int = 0,
) -> list[str]:
    """Writes root/<class>/<i>.png (PNG, lossless) and returns the class names in label order."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    names = []
    for name, kind, colour in CLASSES[:num_classes]:
        folder = root / name.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(images_per_class):
            draw_image(kind, colour, size, rng).save(folder / f"{i:03d}.png")
        names.append(name)
    return names
