"""Training the RAda head on cached, frozen CLIP features.

The encoders are frozen, so training never touches them: features are computed once (per
augmented copy) and every epoch runs over that cache.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from .head import RAdaHead, rada_loss


@dataclass(frozen=True)
class TrainConfig:
    """Defaults tuned on real CLIP ViT-B features (DTD base classes, train -> val)."""

    epochs: int = 20
    lr: float = 5e-4
    batch_size: int = 32
    alpha: float = 0.0
    weight_decay: float = 1e-4
    num_heads: int = 8
    temperature: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        # Checked here, so that a bad value fails before any image is encoded (a NaN lr would
        # otherwise train for minutes and save a NaN head).
        from . import validate

        validate.integer("epochs", self.epochs, 1)
        validate.number("lr", self.lr, positive=True)
        validate.integer("batch_size", self.batch_size, 1)
        validate.number("alpha", self.alpha, minimum=0.0)
        validate.number("weight_decay", self.weight_decay, minimum=0.0)
        validate.integer("num_heads", self.num_heads, 1)
        validate.number("temperature", self.temperature, positive=True)
        validate.integer("seed", self.seed, 0, 2**32 - 1)

    def to_dict(self) -> dict:
        return asdict(self)


def _as_tensor(x, dtype=torch.float32) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def fit_head(
    image_features,
    labels,
    text_features,
    *,
    logit_scale: float = 100.0,
    epochs: int = TrainConfig.epochs,
    lr: float = TrainConfig.lr,
    batch_size: int = TrainConfig.batch_size,
    alpha: float = TrainConfig.alpha,
    temperature: float = TrainConfig.temperature,
    num_heads: int = TrainConfig.num_heads,
    weight_decay: float = TrainConfig.weight_decay,
    seed: int = 0,
    on_epoch: Callable[[int, float], None] | None = None,
) -> RAdaHead:
    """Trains a fresh RAda head on (N x D) image features and (K x D) class text features.

    Features may be numpy arrays or tensors and need not be normalised (they are L2-normalised
    here, as the head expects). Only the head's six projections are optimised.
    """
    feats = l2_normalize(_as_tensor(image_features))
    text = l2_normalize(_as_tensor(text_features))
    y = _as_tensor(labels, torch.long)
    if feats.ndim != 2 or text.ndim != 2 or feats.shape[1] != text.shape[1]:
        raise ValueError(f"features must be N x D and K x D with one D; got {tuple(feats.shape)} and {tuple(text.shape)}")
    if y.shape != (feats.shape[0],):
        raise ValueError(f"labels must have shape ({feats.shape[0]},), got {tuple(y.shape)}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= text.shape[0]):
        raise ValueError(f"labels must lie in [0, {text.shape[0]}); got {int(y.min())}..{int(y.max())}")

    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = RAdaHead(text.shape[1], num_heads=num_heads, temperature=temperature, logit_scale=logit_scale)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, -(-feats.shape[0] // batch_size))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * steps_per_epoch))
    head.train()
    for epoch in range(epochs):
        order = torch.randperm(feats.shape[0], generator=generator)
        total = 0.0
        for start in range(0, feats.shape[0], batch_size):
            idx = order[start : start + batch_size]
            logits, mask = head.logits_and_mask(feats[idx], text)
            loss = rada_loss(logits, mask, y[idx], alpha)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(idx)
        if on_epoch is not None:
            on_epoch(epoch, total / max(1, feats.shape[0]))
    head.eval()
    return head


@torch.no_grad()
def accuracy(head: RAdaHead, image_features, labels, text_features, batch_size: int = 256) -> float:
    feats = l2_normalize(_as_tensor(image_features))
    text = l2_normalize(_as_tensor(text_features))
    y = _as_tensor(labels, torch.long)
    correct = 0
    for start in range(0, feats.shape[0], batch_size):
        pred = head(feats[start : start + batch_size], text).argmax(-1)
        correct += int((pred == y[start : start + batch_size]).sum())
    return correct / max(1, feats.shape[0])


def class_prototypes(image_features, labels, num_classes: int) -> torch.Tensor:
    """The L2-normalised mean of each class's normalised features (a text-feature stand-in)."""
    feats = l2_normalize(_as_tensor(image_features))
    y = _as_tensor(labels, torch.long)
    protos = torch.stack([feats[y == k].mean(0) for k in range(num_classes)])
    return l2_normalize(protos)
