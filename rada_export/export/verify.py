"""Parity of a bundle's ONNX graphs against PyTorch, on the same inputs, with ONNX Runtime or OpenVINO (CPU).

Inputs are seeded random pixels (and frames), plus the user's images when given; every graph of
the bundle is run and each output compared with the PyTorch module it was exported from. OpenVINO
runs each graph as it is in f32, and the FP32 graphs once more in bf16 where the CPU computes bf16
natively (what the runtime runs by default there), judged by the FP16 thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..checkpoint import load_clip_for_checkpoint, load_head
from ..clip import LoadedClip, check_rebuild, load_recorded
from ..errors import RadaError
from ..head import RAdaHead
from ..progress import SILENT, Reporter
from ..runtimes.bundle import layout
from ..runtimes.manifest import FUSED, HEAD, IMAGE_ENCODER, TEXT_ENCODER, GraphEntry, Manifest, read_manifest, verify_checksums
from ..runtimes.openvino_backend import OpenVinoPlan, OpenVinoRefusal, OpenVinoRunner, plan_openvino
from ..runtimes.ort_session import create_session
from ..runtimes.parity import THRESHOLDS, ParityReport, ParityResult, compare
from .modules import FusedModel, HeadGraph, ImageEncoder, TextEncoder

EXTRA_TEXTS = ("a photo of a dog.", "an origami crane, folded from paper!", "número 42 — café", "")
VERIFY_BACKENDS = ("onnxruntime", "openvino")
BACKEND_TITLES = {"onnxruntime": "ONNX Runtime (CPU)", "openvino": "OpenVINO (CPU)"}


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


def _reference_clip(bundle: Path, manifest: Manifest, ckpt: str | Path | None) -> LoadedClip:
    """The PyTorch model the bundle's graphs were exported from, rebuilt from its record."""
    tuned = (manifest.resolved or {}).get("encoder_weights")
    if not tuned:
        if ckpt is not None:
            raise RadaError(f"bundle {bundle} was exported from open_clip's own encoder weights; a checkpoint has nothing to add",
                            "leave ckpt out", field="ckpt")
        return load_recorded(manifest.model, manifest.pretrained, manifest.pretrained_cfg, manifest.resolved, f"bundle {bundle}")
    if ckpt is None:
        raise RadaError(f"bundle {bundle} was exported from a fine-tuned checkpoint: its image encoder is not "
                        f"{manifest.model}/{manifest.pretrained}'s, and the bundle holds it in its graphs only",
                        "pass ckpt= the checkpoint the bundle was exported from", field="ckpt")
    origin = f"checkpoint {ckpt}"
    clip = load_clip_for_checkpoint(load_head(ckpt), manifest.model, manifest.pretrained or None, manifest.pretrained_cfg, origin)
    check_rebuild(clip, manifest.resolved, origin)
    if clip.encoder_weights != tuned:
        raise RadaError(f"{origin} is not the one bundle {bundle} was exported from (its encoder record differs)",
                        "pass the checkpoint named at export", field="ckpt")
    return clip


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
    backend: str = "onnxruntime",
    ckpt: str | Path | None = None,
) -> ParityReport:
    """Runs every graph of the bundle in ONNX Runtime or OpenVINO (``backend``, on the CPU) and in
    PyTorch, and compares the outputs.

    A bundle exported from a fine-tuned checkpoint (``train --finetune``) carries the tuned image
    encoder in its graphs only, not as PyTorch weights (a device bundle should not carry them twice):
    ``ckpt``, the checkpoint it was exported from, supplies them.
    """
    if backend not in VERIFY_BACKENDS:
        raise RadaError(f"verify runs on {' or '.join(VERIFY_BACKENDS)}, not {backend!r}",
                        "TensorRT engines are checked when `rada-export trt` builds them", field="backend")
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    verify_checksums(bundle, manifest)
    runs = _graph_runs(bundle, manifest, backend)  # before the model loads: a missing OpenVINO costs nothing
    if clip is None:
        clip = _reference_clip(bundle, manifest, ckpt)
    head = _torch_head(bundle, manifest)
    text_features = torch.from_numpy(np.load(bundle / layout.TEXT_FEATURES))
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

    references = References(ref_features, ref_text, text_features.numpy(), ref_logits, ref_logits_small, k_small,
                            fused_pixels, fused_frames)
    if backend == "openvino":
        bf16 = any(plan.inference_precision == "bf16" for _, _, plan in runs)
        report.notes.append(f"OpenVINO {runs[0][2].cpu.version} on the CPU ({runs[0][2].cpu.name}): every graph in f32"
                            + ("; the FP32 and INT8 graphs again in bf16, what the runtime runs on this CPU unless "
                               "precision 'fp32' is asked for" if bf16 else "; no bf16 run, since this CPU has no native bf16"))
    with reporter.task(f"verifying graphs with {BACKEND_TITLES[backend]}", len(runs)) as advance:
        for key, entry, plan in runs:
            graph = key.split(".")[0]
            run = _graph_run(bundle, manifest, entry, plan)
            # bf16 compute is judged as FP16 is (INT8 graphs keep their own, looser, thresholds).
            in_bf16 = plan is not None and plan.inference_precision == "bf16"
            precision = ("int8-bf16" if entry.precision == "int8" else "bf16") if in_bf16 else entry.precision
            bar = THRESHOLDS["int8" if entry.precision == "int8" else "fp16"] if in_bf16 else None

            def check(output: str, reference: np.ndarray, candidate: np.ndarray, is_logits: bool) -> None:
                report.results.append(compare(graph, precision, output, reference, candidate, is_logits, bar))

            try:
                _check_graph(graph, entry, run, check, inputs, references)
            except OpenVinoRefusal as err:  # a graph OpenVINO cannot run fails the check, with the reason
                report.results.append(refused(graph, precision, bar or THRESHOLDS[entry.precision]))
                report.notes.append(f"{entry.file} ({precision}): {err.problem}")
            # One session at a time: a big model's graphs each hold their weights (and ONNX
            # Runtime's packed copies of them), so the next session must not open beside this one.
            del run
            advance(1)
    return report


@dataclass
class References:
    """PyTorch's outputs on the reference inputs, per graph."""

    features: np.ndarray
    text: np.ndarray
    text_features: np.ndarray  # the bundle's class text features, the head graph's second input
    logits: np.ndarray
    logits_small: np.ndarray  # the head graph's logits for the first k_small classes
    k_small: int
    fused_pixels: list[np.ndarray]
    fused_frames: list[np.ndarray] | None


def refused(graph: str, precision: str, thresholds) -> ParityResult:
    nan = float("nan")
    return ParityResult(graph=graph, precision=precision, output="refused", samples=0, max_abs_error=float("inf"),
                        mean_cosine=nan, min_cosine=nan, top1_agreement=None, thresholds=thresholds, passed=False)


def _check_graph(graph: str, entry: GraphEntry, run, check, inputs: ReferenceInputs, ref: References) -> None:
    """Runs one graph on the reference inputs and checks every output against PyTorch's."""
    if graph == IMAGE_ENCODER:
        (out,) = run({"pixels": inputs.pixels})
        check("image_features", ref.features, out, False)
    elif graph == TEXT_ENCODER:
        (out,) = run({"token_ids": inputs.tokens})
        check("text_features", ref.text, out, False)
    elif graph == HEAD:
        feeds = {"image_features": ref.features, "text_features": ref.text_features}
        (out,) = run(feeds)
        check("logits", ref.logits, out, True)
        feeds["text_features"] = feeds["text_features"][: ref.k_small]
        (out,) = run(feeds)
        check(f"logits K={ref.k_small}", ref.logits_small, out, True)
    elif graph == FUSED:
        input_name = next(iter(entry.inputs))
        takes_frames = entry.input_dtypes.get(input_name) == "uint8"
        feed = inputs.frames if takes_frames else inputs.pixels
        ref_logits, ref_features = ref.fused_frames if takes_frames else ref.fused_pixels
        logits, features = run({input_name: feed})
        check("logits", ref_logits, logits, True)
        check("image_features", ref_features, features, False)



def _graph_runs(bundle: Path, manifest: Manifest, backend: str) -> list[tuple[str, GraphEntry, OpenVinoPlan | None]]:
    """(graph key, entry, OpenVINO plan or None for ONNX Runtime) for every run the check makes."""
    graphs = sorted(manifest.graphs.items())
    if backend == "onnxruntime":
        return [(key, entry, None) for key, entry in graphs]
    full = plan_openvino("fp32", bundle)
    runs = [(key, entry, full) for key, entry in graphs]
    default = plan_openvino("auto", bundle)
    if default.inference_precision != full.inference_precision:
        # The graphs the runtime runs on OpenVINO: FP32 and INT8 over FP32 (FP16 requests use the FP32 graph).
        runs += [(key, entry, default) for key, entry in graphs if "." not in key or key.endswith(".int8")]
    return runs


def _graph_run(bundle: Path, manifest: Manifest, entry: GraphEntry, plan: OpenVinoPlan | None):
    """feeds -> the graph's outputs in order, on ONNX Runtime (plan None) or OpenVINO."""
    if plan is None:
        session = create_session(bundle / entry.file, "cpu", entry.precision)
        return lambda feeds: session.run(None, feeds)
    runner = OpenVinoRunner(bundle / entry.file, entry, plan)

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = runner.run(feeds)
        return [out[name] for name in runner.output_names]

    return run
