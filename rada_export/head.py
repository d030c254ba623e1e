"""The RAda head: "one last attention" over the rational matrix of CLIP features.

The equations are those of DESIGN.md. The classes are the tokens; three query streams (image,
text, rational) attend over the same keys and values, and the attention softmax of each head runs
jointly over all K*K entries.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

def attention_bytes_per_image(num_classes: int, num_heads: int = 8, bytes_per_value: int = 4) -> int:
    """Memory of the head's three h x K x K attention maps for one image."""
    return 3 * num_heads * num_classes * num_classes * bytes_per_value


PROJECTION_NAMES = ("q_proj1", "q_proj2", "q_proj3", "k_proj", "v_proj", "out_proj")


class RAdaHead(nn.Module):
    """Maps L2-normalised image features (B x D) and text features (K x D) to logits (B x K).

    ``out_proj`` starts at zero, so a fresh head computes zero-shot CLIP logits exactly.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int = 8,
        temperature: float = 1.0,
        logit_scale: float = 100.0,
    ):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.temperature = float(temperature)
        self.logit_scale = float(logit_scale)
        for name in PROJECTION_NAMES:
            setattr(self, name, nn.Linear(embed_dim, embed_dim))
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    @property
    def config(self) -> dict:
        return {
            "embed_dim": self.embed_dim,
            "num_heads": self.num_heads,
            "temperature": self.temperature,
            "logit_scale": self.logit_scale,
        }

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        # (..., K, D) -> (..., h, K, D/h)
        *lead, k, _ = x.shape
        return x.reshape(*lead, k, self.num_heads, -1).transpose(-3, -2)

    def _joint_softmax(self, scores: torch.Tensor, num_classes: int) -> torch.Tensor:
        # Softmax over all entries of each head's K x K matrix (not row by row), times K.
        flat = scores.flatten(-2) / self.temperature
        return num_classes * torch.softmax(flat, dim=-1).view_as(scores)

    def mask(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """The multiplicative mask M = relu(1 + O), B x K x D."""
        return self._mask_and_rational(image_features, text_features)[0]

    def _mask_and_rational(self, f: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.logit_scale
        num_classes = t.shape[0]
        rational = f.unsqueeze(1) * t.unsqueeze(0)  # B x K x D
        scaled = s * rational
        keys = self._split_heads(self.k_proj(scaled))  # B x h x K x dh
        values = self._split_heads(self.v_proj(scaled))
        q_image = self._split_heads(self.q_proj1(math.sqrt(s) * f).unsqueeze(1))  # B x h x 1 x dh
        q_text = self._split_heads(self.q_proj2(math.sqrt(s) * t))  # h x K x dh
        q_rational = self._split_heads(self.q_proj3(scaled))  # B x h x K x dh

        norm = 1.0 / math.sqrt(self.embed_dim // self.num_heads)
        keys_t = keys.transpose(-1, -2)
        # The image query is the same row for every class, so its K x K score matrix has K equal
        # rows; a joint softmax over it is K copies of a row softmax divided by K. Computing the
        # single row (B x h x 1 x K) is exact and K times cheaper.
        a_image = torch.softmax((q_image @ keys_t) * norm / self.temperature, dim=-1)
        a_text = self._joint_softmax((q_text @ keys_t) * norm, num_classes)
        a_rational = self._joint_softmax((q_rational @ keys_t) * norm, num_classes)
        attended = ((a_image + a_text + a_rational) @ values) / 3.0  # B x h x K x dh
        merged = attended.transpose(-3, -2).flatten(-2)  # B x K x D
        offset = self.out_proj(merged)
        return F.relu(1.0 + offset), rational

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        mask, rational = self._mask_and_rational(image_features, text_features)
        return self.logit_scale * (mask * rational).sum(-1)

    def logits_and_mask(self, image_features: torch.Tensor, text_features: torch.Tensor):
        mask, rational = self._mask_and_rational(image_features, text_features)
        return self.logit_scale * (mask * rational).sum(-1), mask


def rada_loss(logits: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, alpha: float) -> torch.Tensor:
    """Cross-entropy plus alpha * mean over the batch of max |M - 1| (DESIGN.md)."""
    loss = F.cross_entropy(logits, labels)
    if alpha:
        loss = loss + alpha * (mask - 1.0).abs().flatten(1).amax(dim=1).mean()
    return loss
