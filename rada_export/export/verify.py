"""Parity of a bundle's ONNX graphs against PyTorch, on the same inputs, with ONNX Runtime (CPU).

Inputs are seeded random pixels (and frames), plus the user's images when given; every graph of
the bundle is run and each output compared with the PyTorch module it was exported from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..clip import LoadedClip, load_recorded
from ..checkpoint import load_head
from ..errors import RadaError
from ..head import RAdaHead
from ..progress import SILENT, Reporter
from ..runtimes.manifest import FUSED, HEAD, IMAGE_ENCODER, TEXT_ENCODER, Manifest, read_manifest, verify_checksums
from ..runtimes.ort_session import create_session
from ..runtimes.parity import ParityReport, compare
from .modules import FusedModel, HeadGraph, ImageEncoder, TextEncoder

EXTRA_TEXTS = ("a photo of a dog.", "an origami crane, folded from paper!", "número 42 — café", "")


@dataclass
class ReferenceInputs:
    pixels: np.ndarray  # N x 3 x H x W float32, normalised
    frames: np.ndarray  # N x H x W x 3 uint8 (for graphs that embed preprocessing)
    tokens: np.ndarray  # K' x L int64


def make_inputs(clip: LoadedClip, manifest: Manifest, images: Sequence[Path] = (), num_random: int = 8, seed: int = 0) -> ReferenceInputs:
    """Seeded random pixels and frames, then the user's images through open_clip's own preprocessing."""
    from ..images import open_image
    from .modules import Preprocess

    height, width = manifest.preprocess.size
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(num_random, height, width, 3), dtype=np.uint8)
    normalise = Preprocess(clip.preprocess_config)
    with torch.no_grad():
        pixels = normalise(torch.from_numpy(frames)).numpy()
    user_pixels, user_frames = [], []
    for path in images:
        img = open_image(Path(path))
        if img is None:
            raise RadaError(f"cannot read image {path}", "pass readable JPEG/PNG/WebP/BMP files")
        tensor = clip.preprocess(img)  # open_clip's own transform: the reference
        user_pixels.append(tensor.numpy())
        mean = np.array(manifest.preprocess.mean, dtype=np.float32)[:, None, None]
        std = np.array(manifest.preprocess.std, dtype=np.float32)[:, None, None]
        user_frames.append(np.clip(np.rint((tensor.numpy() * std + mean) * 255), 0, 255).astype(np.uint8).transpose(1, 2, 0))
    if user_pixels:
        pixels = np.concatenate([pixels, np.stack(user_pixels)]).astype(np.float32)
        frames = np.concatenate([frames, np.stack(user_frames)])
    prompts = [manifest.templates[0].format(name) for name in manifest.class_names] + list(EXTRA_TEXTS)
    tokens = clip.tokenizer(prompts).numpy().astype(np.int64)
    return ReferenceInputs(pixels=pixels.astype(np.float32), frames=frames, tokens=tokens)


def _torch_head(bundle: Path, manifest: Manifest) -> RAdaHead:
    ckpt = load_head(bundle / "head.safetensors")
    head = ckpt.head
    head.logit_scale = manifest.head.logit_scale
    head.temperature = manifest.head.temperature
    return head.eval()


def verify_bundle(
    bundle: str | Path,
    images: Sequence[Path] = (),
    clip: LoadedClip | None = None,
    num_random: int = 8,
    seed: int = 0,
    reporter: Reporter = SILENT,
) -> ParityReport:
    """Runs every graph of the bundle in ONNX Runtime (CPU) and PyTorch and compares the outputs."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    verify_checksums(bundle, manifest)
    if clip is None:
        clip = load_recorded(manifest.model, manifest.pretrained, manifest.pretrained_cfg, manifest.resolved, f"bundle {bundle}")
    head = _torch_head(bundle, manifest)
    text_features = torch.from_numpy(np.load(bundle / "text_features.npy"))
    inputs = make_inputs(clip, manifest, images, num_random, seed)
    report = ParityReport()
    if clip.random_weights:
        report.notes.append("random CLIP weights: parity is meaningful, accuracy is not")

    with torch.no_grad():
        pixels_t = torch.from_numpy(inputs.pixels)
        ref_features = ImageEncoder(clip.model).eval()(pixels_t).numpy()
        ref_text = TextEncoder(clip.model).eval()(torch.from_numpy(inputs.tokens)).numpy()
        ref_logits = HeadGraph(head)(torch.from_numpy(ref_features), text_features).numpy()
        # The head graph is also checked at another K (the first classes only) to exercise dynamic K.
        k_small = max(1, len(manifest.class_names) // 2)
        ref_logits_small = HeadGraph(head)(torch.from_numpy(ref_features), text_features[:k_small]).numpy()
        fused_pixels = [t.numpy() for t in FusedModel(clip.model, head, text_features).eval()(pixels_t)]
        fused_frames = None
        if manifest.embed_preprocess:
            order = manifest.frames.channel_order if manifest.frames is not None else "rgb"
            fused = FusedModel(clip.model, head, text_features, clip.preprocess_config, channel_order=order).eval()
            fused_frames = [t.numpy() for t in fused(torch.from_numpy(inputs.frames))]

    with reporter.task("verifying graphs with ONNX Runtime", len(manifest.graphs)) as advance:
        for key, entry in sorted(manifest.graphs.items()):
            graph = key.split(".")[0]
            session = create_session(bundle / entry.file, "cpu", entry.precision)
            if graph == IMAGE_ENCODER:
                (out,) = session.run(None, {"pixels": inputs.pixels})
                report.results.append(compare(graph, entry.precision, "image_features", ref_features, out, False))
            elif graph == TEXT_ENCODER:
                (out,) = session.run(None, {"token_ids": inputs.tokens})
                report.results.append(compare(graph, entry.precision, "text_features", ref_text, out, False))
            elif graph == HEAD:
                feeds = {"image_features": ref_features, "text_features": text_features.numpy()}
                (out,) = session.run(None, feeds)
                report.results.append(compare(graph, entry.precision, "logits", ref_logits, out, True))
                feeds["text_features"] = feeds["text_features"][:k_small]
                (out,) = session.run(None, feeds)
                report.results.append(compare(graph, entry.precision, f"logits K={k_small}", ref_logits_small, out, True))
            elif graph == FUSED:
                input_name = next(iter(entry.inputs))
                takes_frames = entry.input_dtypes.get(input_name) == "uint8"
                feed = inputs.frames if takes_frames else inputs.pixels
                ref_logits_f, ref_features_f = fused_frames if takes_frames else fused_pixels
                logits, features = session.run(None, {input_name: feed})
                report.results.append(compare(graph, entry.precision, "logits", ref_logits_f, logits, True))
                report.results.append(compare(graph, entry.precision, "image_features", ref_features_f, features, False))
            advance(1)
    return report
