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
from .distributed import Shard, all_gather
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


def _augmented(augment: Callable, img, seed: int, copy: int, index: int) -> torch.Tensor:
    # Seeded per image and copy, not per run: any sharding of the images gives the same crops.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(((seed * 1_000_003 + copy) * 1_000_003 + index) % (1 << 63))
        return augment(img)


def encode_images(
    clip: LoadedClip,
    paths: Sequence[Path],
    labels: Sequence[int],
    *,
    aug_copies: int = 1,
    batch_size: int = 32,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    shard: Shard | None = None,
) -> FeatureCache:
    """Features of every readable image, ``aug_copies`` times (copy 0 unaugmented), copy-major.

    Under ``shard`` each rank decodes and encodes only its share, and the shares are gathered, so
    every rank returns the full cache, identical to a single process's.
    ``progress`` is called with the number of images just encoded (by this rank).
    """
    if aug_copies < 1:
        raise RadaError(f"aug_copies must be at least 1, got {aug_copies}", "use 1 for no augmentation", field="aug_copies")
    shard = shard or Shard()
    decoded = [(i, open_image(Path(paths[i]))) for i in shard.indices(len(paths))]
    readable = [(i, img) for i, img in decoded if img is not None]
    augment = augment_transform(clip.preprocess_config)
    rows: dict[tuple[int, int], torch.Tensor] = {}
    passes = batches = 0
    for copy in range(aug_copies):
        for start in range(0, len(readable), batch_size):
            chunk = readable[start : start + batch_size]
            pixels = torch.stack([clip.preprocess(img) if copy == 0 else _augmented(augment, img, seed, copy, i) for i, img in chunk])
            for (i, _), feature in zip(chunk, encode_pixels(clip, pixels)):
                rows[(copy, i)] = feature
            passes += len(chunk)
            batches += 1
            if progress is not None:
                progress(len(chunk))
    local = (rows, [i for i, img in decoded if img is None], passes, batches)
    shares = all_gather(local, shard)
    rows = {k: v for share in shares for k, v in share[0].items()}
    skipped = sorted(i for share in shares for i in share[1])
    if not rows:
        raise RadaError(
            f"none of the {len(paths)} image files could be read ({len(skipped)} unreadable)",
            "check that the files are real JPEG/PNG/WebP/BMP images",
        )
    keys = sorted(rows)  # (copy, image index): copy-major, in the caller's image order
    return FeatureCache(
        features=torch.stack([rows[k] for k in keys]),
        labels=torch.tensor([int(labels[i]) for _, i in keys], dtype=torch.long),
        skipped=[Path(paths[i]) for i in skipped],
        encoder_passes=sum(share[2] for share in shares),
        encoder_batches=sum(share[3] for share in shares),
    )
