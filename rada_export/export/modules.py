"""The torch modules that become the bundle's ONNX graphs.

Each wraps open_clip's own encoders (and the RAda head) with the normalisation and input
conventions the device sees, so the exported graph needs no code around it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..clip import PreprocessConfig
from ..head import RAdaHead
from . import frames as frames_mod


class L2Normalize(nn.Module):
    """x / ||x||, a named module so that FP16 conversion can find and keep it in FP32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)


class Preprocess(nn.Module):
    """uint8 N x H x W x C frames of any size -> normalised float N x 3 x h x w, as the frames graph.

    The PyTorch reference of ``frames.frames_graph`` (eager only: the resampling weights come from
    the frame's shape through ``frames.axis_plan``); the exported graph is built in ONNX directly.
    ``channel_order`` is that of the frames (``bgr`` for OpenCV); C = 4 drops alpha, C = 1 is grey.
    """

    def __init__(self, cfg: PreprocessConfig, channel_order: str = "rgb"):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("order", torch.from_numpy(frames_mod.channel_indices(channel_order)))
        self.register_buffer("scale", (1.0 / (255.0 * torch.tensor(cfg.std))).view(1, 3, 1, 1))
        self.register_buffer("shift", (torch.tensor(cfg.mean) / torch.tensor(cfg.std)).view(1, 3, 1, 1))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        pixels = frames.to(torch.float32)  # cast first: nothing else touches the uint8 frames
        n, height, width, channels = pixels.shape
        g = frames_mod.geometry(height, width, self.cfg)
        out_h, out_w = self.cfg.size
        py = frames_mod.axis_plan(height, g.resized[0], g.offset[0], out_h, g.bicubic)
        px = frames_mod.axis_plan(width, g.resized[1], g.offset[1], out_w, g.bicubic)
        pixels = pixels.reshape(n, py.reduced, py.factor, px.reduced, px.factor, channels).mean(dim=(2, 4))
        pixels = pixels.permute(0, 3, 1, 2)
        pixels = (pixels @ torch.from_numpy(px.matrix)).clamp(0, 255)
        pixels = (torch.from_numpy(py.matrix).T @ pixels).clamp(0, 255)
        pixels = pixels[:, torch.clamp(self.order, max=channels - 1)]
        if self.cfg.resize_mode == "longest":
            mask = torch.from_numpy(py.valid[:, None] * px.valid[None, :])
            pixels = pixels * mask + float(self.cfg.fill_color) * (1 - mask)
        return pixels * self.scale - self.shift


class ImageEncoder(nn.Module):
    """pixels -> L2-normalised image features, through open_clip's encode_image.

    encode_image is what training encodes with, and the one entry every family shares: CoCa's
    vision tower returns (pooled, tokens), and other families add steps after the tower.
    """

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        self.clip = clip_model
        self.image_norm = L2Normalize()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image_norm(self.clip.encode_image(pixels, normalize=False))


class TextEncoder(nn.Module):
    """token ids (int64 K x L) -> L2-normalised text features, through open_clip's encode_text."""

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        self.clip = clip_model
        self.text_norm = L2Normalize()

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.text_norm(self.clip.encode_text(token_ids, normalize=False))


class HeadGraph(nn.Module):
    """(image features, text features) -> logits: the RAda head alone, any B and K."""

    def __init__(self, head: RAdaHead):
        super().__init__()
        self.head = head

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return self.head(image_features, text_features)


class FusedModel(nn.Module):
    """pixels (or uint8 frames) -> (logits, image features), the class text features as constants."""

    def __init__(self, clip_model: nn.Module, head: RAdaHead, text_features: torch.Tensor, preprocess: PreprocessConfig | None = None,
                 channel_order: str = "rgb"):
        super().__init__()
        self.preprocess = Preprocess(preprocess, channel_order) if preprocess is not None else None
        self.encoder = ImageEncoder(clip_model)
        self.head = head
        self.register_buffer("text_features", text_features.detach().clone().float())

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.preprocess is not None:
            pixels = self.preprocess(pixels)
        features = self.encoder(pixels)
        return self.head(features, self.text_features), features
