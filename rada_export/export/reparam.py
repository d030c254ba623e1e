"""Inference-time reparameterization of towers trained with parallel branches (MobileCLIP, FastViT).

MobileOne/RepMixer blocks train with several conv + BatchNorm branches that fold, exactly in real
arithmetic, into one conv at inference. Exported unfolded, the graph keeps every branch (MobileCLIP-S1:
80 BatchNormalization and 215 Conv nodes; folded: 4 and 173) and runs about 1.5x slower. timm's
``reparameterize_model`` folds every block that offers ``reparameterize`` / ``switch_to_deploy`` /
``fuse``, which is how Apple's MobileCLIP reference and open_clip's own docs prepare these models for
inference (https://github.com/apple/ml-mobileclip, timm.models._manipulate).

The folded copy is only ever exported: training and the parity check keep open_clip's model as built,
so verification compares the exported graph against the unfolded original.
"""

from __future__ import annotations

from torch import nn

_HOOKS = ("reparameterize", "switch_to_deploy")


def has_branches(model: nn.Module) -> bool:
    """True when some block of the model folds its training-time branches for inference."""
    return any(any(callable(getattr(m, hook, None)) for hook in _HOOKS) for m in model.modules())


def for_export(model: nn.Module) -> tuple[nn.Module, bool]:
    """(model to export, whether it was reparameterized); the original is left untouched."""
    if not has_branches(model):
        return model, False
    from timm.utils import reparameterize_model

    folded = reparameterize_model(model, inplace=False).eval()
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded, True
