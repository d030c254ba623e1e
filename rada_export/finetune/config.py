"""The settings of a fine-tuning run (image encoder + head), checked before any image is read.

The head-only warm phase is the frozen-mode training itself (``TrainConfig``); this holds what
comes after it: the encoder + head phase.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .. import validate
from ..errors import RadaError

AMP_MODES = ("none", "bf16")
DEVICES = ("auto", "cpu", "cuda")

# Fine-tuning an encoder on fewer images than this per class memorises them within an epoch or
# two, and the held-out images that pick the best epoch are then too few to tell epochs apart.
MIN_TRAIN_IMAGES_PER_CLASS = 4
MIN_VAL_IMAGES_PER_CLASS = 1


@dataclass(frozen=True)
class FinetuneConfig:
    """Encoder + head phase. Defaults follow full fine-tuning of CLIP (FLYP, WiSE-FT): AdamW,
    a small encoder learning rate, weight decay 0.1, warm-up then cosine decay."""

    epochs: int = 10
    encoder_lr: float = 1e-5
    head_lr: float = 1e-4
    weight_decay: float = 0.1
    warmup_fraction: float = 0.1
    layer_decay: float = 1.0  # 1.0: every encoder layer at encoder_lr
    batch_size: int = 32  # the global batch, split across torchrun ranks
    wise_alpha: float | None = None  # None: no weight-space ensembling
    amp: str = "none"
    grad_checkpointing: bool = False
    unfreeze_text: bool = False
    device: str = "auto"
    num_workers: int = 0
    max_grad_norm: float | None = 1.0

    def __post_init__(self) -> None:
        validate.integer("ft_epochs", self.epochs, 1)
        validate.number("encoder_lr", self.encoder_lr, positive=True)
        validate.number("head_lr", self.head_lr, minimum=0.0)
        validate.number("ft_weight_decay", self.weight_decay, minimum=0.0)
        validate.number("warmup_fraction", self.warmup_fraction, 0.0, 1.0)
        validate.number("layer_decay", self.layer_decay, positive=True, maximum=1.0)
        validate.integer("ft_batch_size", self.batch_size, 1)
        if self.wise_alpha is not None:
            validate.number("wise", self.wise_alpha, 0.0, 1.0)
        validate.choice("amp", self.amp, AMP_MODES)
        validate.choice("device", self.device, DEVICES)
        validate.integer("num_workers", self.num_workers, 0, 64)
        if self.max_grad_norm is not None:
            validate.number("max_grad_norm", self.max_grad_norm, positive=True)

    def to_dict(self) -> dict:
        return asdict(self)

    def schedule_key(self) -> dict:
        """What must not change between a run and its resumption (the schedule and the optimiser)."""
        keep = ("epochs", "encoder_lr", "head_lr", "weight_decay", "warmup_fraction", "layer_decay", "batch_size",
                "unfreeze_text", "max_grad_norm")
        return {k: getattr(self, k) for k in keep}


def check_data_size(train_counts: list[int], val_counts: list[int], class_names: list[str]) -> None:
    """Refuses data too small to fine-tune an encoder on (see MIN_TRAIN_IMAGES_PER_CLASS)."""
    few = [(name, n) for name, n in zip(class_names, train_counts) if n < MIN_TRAIN_IMAGES_PER_CLASS]
    if few:
        listed = ", ".join(f"{name!r} ({n})" for name, n in few[:4])
        raise RadaError(
            f"too few training images to fine-tune the encoder: {listed} "
            f"{'has' if len(few) == 1 else 'have'} under {MIN_TRAIN_IMAGES_PER_CLASS} per class",
            f"give every class at least {MIN_TRAIN_IMAGES_PER_CLASS} training images (more than 16 is where fine-tuning "
            "starts to pay), or train the head alone on frozen features (no fine-tuning)", field="finetune",
        )
    missing = [name for name, n in zip(class_names, val_counts) if n < MIN_VAL_IMAGES_PER_CLASS]
    if missing:
        raise RadaError(
            f"fine-tuning keeps the epoch with the best validation accuracy, but class {missing[0]!r} has no validation image",
            "pass val='DIR' with images of every class, or a larger val_fraction=0.3", field="val",
        )
