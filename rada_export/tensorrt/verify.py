"""Parity of a TensorRT engine against ONNX Runtime FP32 (CPU), on seeded structured inputs. No torch.

The same metrics, report and table as ``rada-export verify`` (:mod:`rada_export.runtimes.parity`,
:class:`~rada_export.runtimes.parity.ParityReport`), with the reference being the bundle's
FP32 ONNX graph run by ONNX Runtime on the CPU, so it runs on a Jetson without PyTorch.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rada_export.errors import RadaError
from rada_export.runtimes.manifest import FUSED, HEAD, IMAGE_ENCODER, TEXT_ENCODER, Manifest
from rada_export.runtimes.bundle import layout
from rada_export.runtimes.parity import THRESHOLDS, ParityReport, Thresholds, compare

EXTRA_TEXTS = ("a photo of a dog.", "an origami crane, folded from paper!", "número 42 — café")
# 32 samples: one top-1 flip then costs ~3 %, within the FP16 (99 %) threshold only when the
# flip is a near-tie, which the margin below excludes. The engine (and the reference) run them in
# chunks of at most the profile's max batch, so a small engine is checked on as many samples.
PARITY_SAMPLES = 32
# Top-1 is judged only on samples whose reference top-1 beats its top-2 by this much, in units of
# cosine similarity (logits are logit_scale x cosine, plus SigLIP's bias, which cancels in a difference).
# FP16 rounding moves CLIP's unit-norm features by about 1e-3 in cosine and INT8 by a few 1e-3; 0.02
# is several times that, so a flip above it is an engine error, and one below it a near-tie (random
# weights, noise-like inputs) that either order is right for.
TOP1_MARGIN = 0.02


def thresholds_for(precision: str, tf32: bool) -> Thresholds:
    """FP32 engines built without TF32 meet the FP32 thresholds; with TF32 (10-bit mantissa products) the FP16 ones."""
    if precision == "fp32":
        return THRESHOLDS["fp16"] if tf32 else THRESHOLDS["fp32"]
    return THRESHOLDS[precision]


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def parity_prompts(manifest: Manifest, count: int) -> list[str]:
    """``count`` texts: the class prompts, then a few others, repeated."""
    prompts = [(manifest.templates[0] if manifest.templates else "{}").format(c) for c in manifest.class_names] + list(EXTRA_TEXTS)
    return [prompts[i % len(prompts)] for i in range(count)]


def text_vocab_size(graph_path: Path) -> int | None:
    """Rows of the text graph's token embedding (the Gather of an initializer by the int ids), None when unknown."""
    try:
        import onnx
    except ImportError:
        return None
    model = onnx.load(str(graph_path), load_external_data=False)
    inits = {t.name: t for t in model.graph.initializer}
    ids = {i.name for i in model.graph.input}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[0] in inits and node.input[1] in ids:
            return int(inits[node.input[0]].dims[0])
    return None


def parity_tokens(bundle: Path, manifest: Manifest, count: int, length: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """Token ids for ``count`` texts through the bundle's own tokenizer (CLIP BPE or a SigLIP tokenizer.json), and its name.

    A bundle whose tokenizer the runtime cannot rebuild gets seeded ids inside the text graph's vocabulary.
    """
    from rada_export.runtimes.tokenizer import load_tokenizer

    try:
        tokenizer = load_tokenizer(bundle, manifest.tokenizer)
        return np.asarray(tokenizer(parity_prompts(manifest, count), context_length=length)), type(tokenizer).__name__
    except RadaError:
        pass
    entry = manifest.graphs.get(TEXT_ENCODER)
    vocab = (text_vocab_size(bundle / entry.file) if entry is not None else None) or 49408
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, max(2, vocab - 2), size=(count, length), dtype=np.int64)
    ends = rng.integers(2, length, size=count)
    for row, end in enumerate(ends):
        # CLIP's start/end tokens are its two largest ids (the end token is where the graph pools).
        ids[row, 0], ids[row, end], ids[row, end + 1:] = vocab - 2, vocab - 1, 0
    return ids, f"seeded ids below {vocab} (the bundle's tokenizer is not loadable here)"


def textured_images(rng: np.random.Generator, count: int, height: int, width: int) -> np.ndarray:
    """``count`` seeded uint8 RGB images with structure (gradients, gratings, shapes), not uniform noise.

    Uniform noise gives CLIP near-identical features and near-tied logits; these give features
    that differ between images, so top-1 has clear margins to judge.
    """
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    out = np.empty((count, height, width, 3), dtype=np.uint8)
    for i in range(count):
        base = rng.uniform(0, 1, size=(2, 3)).astype(np.float32)
        angle, freq, phase = rng.uniform(0, np.pi), rng.uniform(2, 24), rng.uniform(0, 2 * np.pi)
        grating = np.sin(2 * np.pi * freq * (x * np.cos(angle) + y * np.sin(angle)) + phase)
        img = np.empty((height, width, 3), dtype=np.float32)
        for c in range(3):
            img[..., c] = base[0, c] * (1 - y) + base[1, c] * x + 0.25 * grating * rng.uniform(-1, 1)
        for _ in range(int(rng.integers(1, 4))):  # a few flat-coloured discs
            cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
            img[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.uniform(0, 1, size=3)
        img += rng.normal(0, 0.02, size=img.shape).astype(np.float32)  # a little sensor noise
        out[i] = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


def make_feeds(
    bundle: Path, manifest: Manifest, graph: str, sizes: dict[str, int], seed: int = 0,
) -> dict[str, np.ndarray]:
    """Seeded inputs of the FP32 graph ``graph``, with symbolic dims set from ``sizes`` (batch, num_texts, num_classes)."""
    from rada_export.runtimes.preprocess import normalize

    entry = manifest.graphs[graph]
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, shape in entry.inputs.items():
        dims = [sizes[d] if isinstance(d, str) else int(d) for d in shape]
        dtype = entry.input_dtypes.get(name, "float32")
        if graph in (FUSED, IMAGE_ENCODER):
            size = tuple(manifest.preprocess.size)
            channels = 3
            if dtype == "uint8" and manifest.frames is not None:
                # A frames graph resizes in the graph: feed frames of the profile's opt size (e.g. 1080p),
                # so the engine's resize is what parity checks, and a fixed --frame-size profile accepts them.
                f = manifest.frames
                size = (sizes.get("frame_height", f.height[1]), sizes.get("frame_width", f.width[1]))
                channels = sizes.get("frame_channels", _clamp(3, f.channels[0], f.channels[2]))
            frames = textured_images(rng, dims[0], *size)
            if channels != 3:  # a 4-channel (e.g. BGRA) profile: add an opaque alpha; 1 channel: grey
                frames = (np.concatenate([frames, np.full(frames.shape[:3] + (channels - 3,), 255, np.uint8)], -1)
                          if channels > 3 else frames[..., :channels])
            feeds[name] = frames if dtype == "uint8" else normalize(frames, manifest.preprocess)
        elif graph == TEXT_ENCODER:
            feeds[name] = parity_tokens(bundle, manifest, dims[0], dims[1], seed)[0].astype(dtype)
        elif graph == HEAD and name == "text_features":
            text = np.load(bundle / layout.TEXT_FEATURES).astype(np.float32)
            rows = [text[i % len(text)] for i in range(dims[0])]
            feeds[name] = np.ascontiguousarray(np.stack(rows))
        else:
            x = rng.standard_normal(dims).astype(np.float32)
            feeds[name] = x / np.linalg.norm(x, axis=-1, keepdims=True)
    return feeds


def run_in_chunks(run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], feeds: dict[str, np.ndarray],
                  split: tuple[str, ...], limit: int) -> dict[str, np.ndarray]:
    """``run`` on slices of at most ``limit`` rows of the inputs named in ``split``; outputs joined on their first axis."""
    rows = {len(feeds[name]) for name in split if name in feeds}
    total = rows.pop() if len(rows) == 1 else None
    if total is None or total <= limit:
        return run(feeds)
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, total, limit):
        chunk = {k: (v[start:start + limit] if k in split else v) for k, v in feeds.items()}
        for key, value in run(chunk).items():
            parts.setdefault(key, []).append(np.asarray(value))
    return {key: np.concatenate(values, axis=0) for key, values in parts.items()}


def clear_margin_rows(logits: np.ndarray, margin: float) -> np.ndarray:
    """Rows whose top-1 logit beats the top-2 by more than ``margin`` (all rows when there is one class)."""
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 2 or logits.shape[1] < 2:
        return np.ones(len(logits), dtype=bool)
    top2 = np.sort(logits, axis=1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]) > margin


def sizes_to_check(ranges: dict[str, tuple[int, int, int]], graph: str, num_classes: int, num_texts: int) -> list[tuple[str, dict[str, int]]]:
    """The main check (PARITY_SAMPLES images or texts, run in chunks of the profile's max) and one at the profile's low end."""
    def pick(dim: str, want: int) -> int:
        low, _, high = ranges.get(dim, (1, want, want))
        return _clamp(want, low, high)

    # batch and num_texts are split into chunks the engine takes; num_classes is one call's width, so it stays in range.
    main = {"batch": max(PARITY_SAMPLES, ranges.get("batch", (1,))[0]),
            "num_texts": max(num_texts, PARITY_SAMPLES, ranges.get("num_texts", (1,))[0]),
            "num_classes": pick("num_classes", num_classes)}
    for dim, want in (("frame_height", None), ("frame_width", None), ("frame_channels", 3)):
        if dim in ranges:
            low, opt, high = ranges[dim]
            main[dim] = _clamp(opt if want is None else want, low, high)
    checks = [("", main)]
    if graph == HEAD:
        small = pick("num_classes", max(1, num_classes // 2))
        if small != main["num_classes"]:
            checks.append((f" K={small}", {**main, "num_classes": small}))
    dim = "num_texts" if graph == TEXT_ENCODER else "batch"
    low = ranges.get(dim, (main[dim],) * 3)[0]
    if low != main[dim]:
        label = "N" if dim == "num_texts" else "B"
        checks.append((f" {label}={low}", {**main, dim: low}))
    return checks


def logit_scale_of(manifest: Manifest) -> float:
    """The scale of the logits the graphs output (the head's, else CLIP's)."""
    head = getattr(manifest, "head", None)
    scale = getattr(head, "logit_scale", None) if head is not None else None
    return float(scale if scale else manifest.logit_scale)


def parity_plan(manifest: Manifest, graph: str, precision: str, ranges: dict[str, tuple[int, int, int]], tf32: bool,
                tokenizer: str | None = None) -> dict[str, Any]:
    """What the parity check after a build will feed and require (no ONNX Runtime, no engine needed)."""
    entry = manifest.graphs[graph]
    num_classes = len(manifest.class_names)
    num_texts = num_classes * max(1, len(manifest.templates)) + len(EXTRA_TEXTS)
    split = split_dims(graph)
    checks = []
    for suffix, sizes in sizes_to_check(ranges, graph, num_classes, num_texts):
        rows = sizes[split]
        checks.append({"label": suffix.strip() or "main", "sizes": sizes, "rows": rows,
                       "chunk": min(rows, ranges.get(split, (rows,) * 3)[2])})
    if graph in (FUSED, IMAGE_ENCODER):
        frames = manifest.frames is not None and graph == FUSED and "uint8" in entry.input_dtypes.values()
        inputs = ("seeded textured uint8 frames (gradients, gratings, discs) at the profile's opt size" if frames
                  else "seeded textured images (gradients, gratings, discs), normalised as the bundle's preprocessing says")
    elif graph == TEXT_ENCODER:
        inputs = f"class prompts and {len(EXTRA_TEXTS)} other texts through {tokenizer or 'the bundle tokenizer'}"
    else:
        inputs = "seeded unit-norm image features and the bundle's class text features"
    thresholds = thresholds_for(precision, tf32)
    margin = TOP1_MARGIN * logit_scale_of(manifest)
    return {"reference": "ONNX Runtime FP32 (CPU)", "reference_graph": entry.file, "inputs": inputs, "checks": checks,
            "thresholds": thresholds.describe(),
            "top1": (f"judged only on samples whose reference top-1 logit beats the top-2 by more than {margin:.3g} "
                     f"({TOP1_MARGIN} x logit scale {logit_scale_of(manifest):.4g})")
            if "logits" in entry.outputs and thresholds.top1_agreement is not None else None}


def split_dims(graph: str) -> str:
    """The dimension whose rows are independent: the one parity splits into engine-sized chunks."""
    return "num_texts" if graph == TEXT_ENCODER else "batch"


def verify_engine(
    bundle: Path,
    manifest: Manifest,
    graph: str,
    precision: str,
    run_engine: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    ranges: dict[str, tuple[int, int, int]],
    tf32: bool = False,
    seed: int = 0,
    session: Any = None,
) -> ParityReport:
    """Runs the engine and ONNX Runtime FP32 (CPU) on the same seeded inputs and compares every output.

    Batches larger than the profile's max are run in chunks (on both sides). Top-1 agreement is judged
    on a separate row, over the samples whose reference margin is clear (:data:`TOP1_MARGIN`).
    """
    from rada_export.runtimes.ort_session import create_session

    bundle = Path(bundle)
    reference = manifest.graphs[graph]
    if session is None:
        session = create_session(bundle / reference.file, "cpu", "fp32")
    output_names = [o.name for o in session.get_outputs()]
    thresholds = thresholds_for(precision, tf32)
    cosines_only = replace(thresholds, top1_agreement=None)
    margin = TOP1_MARGIN * logit_scale_of(manifest)
    report = ParityReport()
    num_classes = len(manifest.class_names)
    num_texts = num_classes * max(1, len(manifest.templates)) + len(EXTRA_TEXTS)
    split_dim = split_dims(graph)
    split = tuple(n for n, dims in reference.inputs.items() if dims and dims[0] == split_dim)
    limit = ranges.get(split_dim, (1, PARITY_SAMPLES, PARITY_SAMPLES))[2]

    def run_reference(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(output_names, session.run(output_names, feeds)))

    for suffix, sizes in sizes_to_check(ranges, graph, num_classes, num_texts):
        feeds = make_feeds(bundle, manifest, graph, sizes, seed)
        expected = run_in_chunks(run_reference, feeds, split, limit)
        got = run_in_chunks(run_engine, feeds, split, limit)
        for name in output_names:
            if name not in got:
                raise RadaError(f"the engine has no output {name!r} (it has {sorted(got)})", "rebuild the engine from this bundle")
            logits = name == "logits"
            report.results.append(compare(graph, precision, name + suffix, expected[name], got[name], logits, cosines_only))
            if not logits or thresholds.top1_agreement is None:
                continue
            clear = clear_margin_rows(expected[name], margin)
            if clear.any():
                report.results.append(compare(graph, precision, f"{name}{suffix} top-1 (margin > {margin:.3g})", expected[name][clear],
                                              got[name][clear], True, Thresholds(top1_agreement=thresholds.top1_agreement)))
            report.notes.append(f"{name}{suffix}: top-1 judged on {int(clear.sum())} of {len(clear)} samples whose reference "
                                f"top-1 beats the top-2 by more than {margin:.3g} (the rest are near-ties)")
    if precision == "fp32":
        report.notes.append("FP32 engine built with TF32 (fp16 thresholds apply)" if tf32
                            else "FP32 engine built with TF32 off (fp32 thresholds apply)")
    return report
