"""Images for the encoder + head phase: seeded augmentation and the same global batches on any world size.

One process and N torchrun ranks see the same global batches: the order of an epoch is drawn
from the seed and the epoch alone, each global batch is cut into N contiguous slices (rank r takes
slice r), and every image's augmentation is seeded by (seed, epoch, image), not by the rank or
the worker that happens to decode it. So the gradients that DDP averages are those of one process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch

from ..distributed import Shard
from ..images import open_image

_MIX = 1_000_003


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed((seed * _MIX + epoch + 1) % (1 << 63))
    return torch.randperm(n, generator=generator).tolist()


def global_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The epoch's global batches (the last may be short; none is dropped)."""
    order = epoch_order(n, seed, epoch)
    return [order[start : start + batch_size] for start in range(0, n, batch_size)]


def rank_slice(batch: Sequence[int], shard: Shard) -> tuple[list[int], bool]:
    """This rank's contiguous share of a global batch, and whether it is a stand-in.

    A global batch shorter than the world leaves some ranks without an image; such a rank takes
    the batch's first image with a zero weight, so that every rank runs the same backward pass
    (DDP needs that) and adds nothing to the gradient.
    """
    per, extra = divmod(len(batch), shard.world_size)
    start = shard.rank * per + min(shard.rank, extra)
    mine = list(batch[start : start + per + (1 if shard.rank < extra else 0)])
    if not mine:
        return [batch[0]], True
    return mine, False


class AugmentedImages(torch.utils.data.Dataset):
    """Decodes an image when asked and augments it with a seed of (seed, epoch, index).

    Decoding per access keeps memory flat for thousands of images; the files were read once
    already by the warm phase, which skipped the unreadable ones.
    """

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], augment: Callable, seed: int):
        self.paths = [Path(p) for p in paths]
        self.labels = [int(y) for y in labels]
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = open_image(self.paths[index])
        if img is None:  # changed on disk since the warm phase read it
            raise OSError(f"image {self.paths[index]} is no longer readable")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(((self.seed * _MIX + self.epoch + 1) * _MIX + index) % (1 << 63))
            return self.augment(img), self.labels[index]


class EvalImages(torch.utils.data.Dataset):
    """Validation images through the model's own eval preprocessing."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], preprocess: Callable):
        self.paths = [Path(p) for p in paths]
        self.labels = [int(y) for y in labels]
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = open_image(self.paths[index])
        if img is None:
            raise OSError(f"image {self.paths[index]} is no longer readable")
        return self.preprocess(img), self.labels[index]


def loader(dataset: torch.utils.data.Dataset, batches: list[list[int]], num_workers: int) -> torch.utils.data.DataLoader:
    """Yields (pixels, labels) for the given index batches, in order."""
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                                       persistent_workers=False, pin_memory=False)
