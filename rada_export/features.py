"""Encoding images with a frozen CLIP image tower, once per augmented copy.

Training runs over the cache this module produces, so epochs cost no encoder passes. Copy 0 of
every image is the model's own eval preprocessing; further copies use the paper's augmentations
(random resized crop and horizontal flip), seeded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from .clip import LoadedClip, PreprocessConfig
from .errors import RadaError
from .images import open_image


@dataclass
class FeatureCache:
    features: torch.Tensor  # (copies * N_ok) x D, L2-normalised
    labels: torch.Tensor  # (copies * N_ok)
    skipped: list[Path]
    encoder_passes: int  # images pushed through the image tower
    encoder_batches: int


def augment_transform(cfg: PreprocessConfig, scale: tuple[float, float] = (0.5, 1.0)) -> Callable:
    """Random resized crop + horizontal flip at the model's input size, then its normalisation."""
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode

    interpolation = InterpolationMode(cfg.interpolation) if cfg.interpolation in ("bicubic", "bilinear", "nearest") else InterpolationMode.BICUBIC
    return transforms.Compose(
        [
            transforms.Lambda(lambda img: img.convert("RGB")),
            transforms.RandomResizedCrop(cfg.size, scale=scale, interpolation=interpolation, antialias=True),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(cfg.mean, cfg.std),
        ]
    )


@torch.no_grad()
def encode_pixels(clip: LoadedClip, pixels: torch.Tensor) -> torch.Tensor:
    feats = clip.model.encode_image(pixels)
    return feats / feats.norm(dim=-1, keepdim=True)


def encode_images(
    clip: LoadedClip,
    paths: Sequence[Path],
    labels: Sequence[int],
    *,
    aug_copies: int = 1,
    batch_size: int = 32,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> FeatureCache:
    """Features of every readable image, ``aug_copies`` times (copy 0 unaugmented).

    ``progress`` is called with the number of images just encoded.
    """
    if aug_copies < 1:
        raise RadaError(f"--aug-copies must be at least 1, got {aug_copies}", "use 1 for no augmentation")
    images, kept_labels, skipped = [], [], []
    for path, label in zip(paths, labels):
        img = open_image(Path(path))
        if img is None:
            skipped.append(Path(path))
        else:
            images.append(img)
            kept_labels.append(int(label))
    if not images:
        raise RadaError(
            f"none of the {len(paths)} image files could be read ({len(skipped)} unreadable)",
            "check that the files are real JPEG/PNG/WebP/BMP images",
        )
    augment = augment_transform(clip.preprocess_config)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # torchvision's random transforms draw from the global generator
    chunks, passes, batches = [], 0, 0
    try:
        for copy in range(aug_copies):
            transform = clip.preprocess if copy == 0 else augment
            for start in range(0, len(images), batch_size):
                batch = torch.stack([transform(img) for img in images[start : start + batch_size]])
                chunks.append(encode_pixels(clip, batch))
                passes += batch.shape[0]
                batches += 1
                if progress is not None:
                    progress(batch.shape[0])
    finally:
        torch.random.set_rng_state(generator_state)
    labels_t = torch.tensor(kept_labels * aug_copies, dtype=torch.long)
    return FeatureCache(torch.cat(chunks), labels_t, skipped, passes, batches)
