"""Shared by the fine-tuning tests: a labelled image set, its held-out test images, and scoring."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

# The fine-tuning settings of the tests: a random tiny ViT needs a far larger encoder learning
# rate than a pretrained CLIP (1e-5 by default), and no weight decay toward a random start.
FT_ARGS = ["--finetune", "--encoder-lr", "1e-3", "--ft-head-lr", "1e-3", "--ft-weight-decay", "0", "--ft-batch-size", "12"]


def make_sets(root: Path, per_class: int = 12, test_per_class: int = 8) -> tuple[Path, Path]:
    """Train (split into train and validation by the command) and a test set drawn with another seed.

    Six classes of coloured shapes at the tiny ViT's input size (64 px): a head on frozen random
    features stays near chance on them, an encoder that trains learns them.
    """
    from rada_export.synthetic import make_image_folder

    data, test = root / "data", root / "test"
    make_image_folder(data, images_per_class=per_class, size=64, seed=0)
    make_image_folder(test, images_per_class=test_per_class, size=64, seed=1)
    return data, test


@contextlib.contextmanager
def one_torch_thread():
    """On a shared 2-core machine, torch's thread pool spinning against other processes made a
    6 s fine-tuning run take 40 s; the tiny model gains nothing from a second thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def pixels_of(clip, test: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The test images through the model's own eval preprocessing, and their labels."""
    from rada_export.images import open_image, scan_image_folder

    images = scan_image_folder(test)
    pixels = torch.stack([clip.preprocess(open_image(p)) for p in images.paths])
    return pixels, torch.tensor(images.labels)


@torch.no_grad()
def torch_logits(ckpt_path: Path, pixels: torch.Tensor) -> torch.Tensor:
    """Logits of a checkpoint's own model: its (fine-tuned) encoder, its head, its class features."""
    from rada_export.checkpoint import load_clip_for_checkpoint, load_head

    ckpt = load_head(ckpt_path)
    clip = load_clip_for_checkpoint(ckpt, ckpt.metadata.model, None)
    feats = clip.model.encode_image(pixels)
    feats = feats / feats.norm(dim=-1, keepdim=True)
    ckpt.head.logit_scale = clip.logit_scale
    return ckpt.head.eval()(feats, ckpt.text_features)
