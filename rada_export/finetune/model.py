"""The trainable module of the encoder + head phase: CLIP's image tower feeding the RAda head."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..head import RAdaHead


def visual_keys(model: nn.Module) -> list[str]:
    return [k for k in model.state_dict() if k.startswith("visual.")]


def text_keys(model: nn.Module) -> list[str]:
    """The text tower's tensors: everything outside the image tower but the logit scale and bias,
    which stay CLIP's constants."""
    return [k for k in model.state_dict() if not k.startswith("visual.") and k not in ("logit_scale", "logit_bias")]


def set_trainable(model: nn.Module, unfreeze_text: bool) -> None:
    """The image tower trains; the text tower only when asked; the logit scale and bias never."""
    for name, p in model.named_parameters():
        if name in ("logit_scale", "logit_bias"):
            p.requires_grad_(False)
        elif name.startswith("visual."):
            p.requires_grad_(True)
        else:
            p.requires_grad_(unfreeze_text)


def tower_parameters(model: nn.Module) -> list[list[tuple[str, nn.Parameter]]]:
    visual = [(n, p) for n, p in model.named_parameters() if n.startswith("visual.")]
    text = [(n, p) for n, p in model.named_parameters() if not n.startswith("visual.")]
    return [visual, text]


def normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class FinetuneModel(nn.Module):
    """pixels -> (logits, mask). The head runs in FP32 even under bf16 autocast: its joint softmax
    and the logit scale of about 100 are where reduced precision would bite."""

    def __init__(self, clip_model: nn.Module, head: RAdaHead, text_features: torch.Tensor, amp: str = "none",
                 tokens: torch.Tensor | None = None):
        super().__init__()
        self.clip = clip_model
        self.head = head
        self.amp = amp
        self.register_buffer("text_features", text_features.detach().float().clone(), persistent=False)
        # With a trainable text tower the class features are recomputed (with gradients) every step.
        self.register_buffer("tokens", tokens.clone() if tokens is not None else None, persistent=False)

    def autocast(self, device_type: str):
        if self.amp == "bf16":
            return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def current_text_features(self) -> torch.Tensor:
        if self.tokens is None:
            return self.text_features
        k = self.text_features.shape[0]
        with self.autocast(self.tokens.device.type):
            emb = self.clip.encode_text(self.tokens)
        per_prompt = normalize(emb.float()).view(k, -1, emb.shape[-1])
        return normalize(per_prompt.mean(dim=1))

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        with self.autocast(pixels.device.type):
            feats = self.clip.encode_image(pixels)
        return normalize(feats.float())

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head.logits_and_mask(self.image_features(pixels), self.current_text_features())
