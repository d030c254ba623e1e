"""Parity of a TensorRT engine against ONNX Runtime FP32 (CPU), on seeded inputs. No torch.

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
from rada_export.runtimes.parity import THRESHOLDS, ParityReport, Thresholds, compare

EXTRA_TEXTS = ("a photo of a dog.", "an origami crane, folded from paper!", "número 42 — café")
DEFAULT_SAMPLES = 8


def thresholds_for(precision: str, tf32: bool) -> Thresholds:
    """FP32 engines built without TF32 meet the FP32 thresholds; with TF32 (10-bit mantissa products) the FP16 ones."""
    if precision == "fp32":
        return THRESHOLDS["fp16"] if tf32 else THRESHOLDS["fp32"]
    return THRESHOLDS[precision]


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def _tokens(bundle: Path, manifest: Manifest, count: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """Token ids for ``count`` texts: the class prompts (and a few others) through the bundle's tokenizer."""
    prompts = [(manifest.templates[0] if manifest.templates else "{}").format(c) for c in manifest.class_names] + list(EXTRA_TEXTS)
    prompts = [prompts[i % len(prompts)] for i in range(count)]
    try:
        from rada_export.runtimes.tokenizer import ClipTokenizer

        return ClipTokenizer.from_manifest_entry(bundle, manifest.tokenizer)(prompts, context_length=length)
    except RadaError:
        # Bundles whose tokenizer the runtime cannot rebuild: random ids with start and end tokens,
        # which exercise the same graph (the end token is the largest id, where it pools).
        ids = rng.integers(1, 49406, size=(count, length), dtype=np.int64)
        ends = rng.integers(2, length, size=count)
        for row, end in enumerate(ends):
            ids[row, 0], ids[row, end], ids[row, end + 1:] = 49406, 49407, 0
        return ids


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
            size = tuple(manifest.preprocess.size) + (3,)
            if dtype == "uint8" and manifest.frames is not None:
                # A frames graph resizes in the graph: feed frames of the profile's opt size (e.g. 1080p),
                # so the engine's resize is what parity checks, and a fixed --frame-size profile accepts them.
                f = manifest.frames
                size = (sizes.get("frame_height", f.height[1]), sizes.get("frame_width", f.width[1]),
                        sizes.get("frame_channels", _clamp(3, f.channels[0], f.channels[2])))
            frames = rng.integers(0, 256, size=(dims[0], *size), dtype=np.uint8)
            feeds[name] = frames if dtype == "uint8" else normalize(frames, manifest.preprocess)
        elif graph == TEXT_ENCODER:
            feeds[name] = _tokens(bundle, manifest, dims[0], dims[1], rng).astype(dtype)
        elif graph == HEAD and name == "text_features":
            text = np.load(bundle / "text_features.npy").astype(np.float32)
            rows = [text[i % len(text)] for i in range(dims[0])]
            feeds[name] = np.ascontiguousarray(np.stack(rows))
        else:
            x = rng.standard_normal(dims).astype(np.float32)
            feeds[name] = x / np.linalg.norm(x, axis=-1, keepdims=True)
    return feeds


def sizes_to_check(ranges: dict[str, tuple[int, int, int]], graph: str, num_classes: int, num_texts: int) -> list[tuple[str, dict[str, int]]]:
    """The main check (batch 8 or what the profile allows) and one at the profile's low end."""
    def pick(dim: str, want: int) -> int:
        low, _, high = ranges.get(dim, (1, want, want))
        return _clamp(want, low, high)

    main = {"batch": pick("batch", DEFAULT_SAMPLES), "num_texts": pick("num_texts", num_texts),
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
    """Runs the engine and ONNX Runtime FP32 (CPU) on the same seeded inputs and compares every output."""
    from rada_export.runtimes.ort_session import create_session

    bundle = Path(bundle)
    reference = manifest.graphs[graph]
    if session is None:
        session = create_session(bundle / reference.file, "cpu", "fp32")
    output_names = [o.name for o in session.get_outputs()]
    thresholds = thresholds_for(precision, tf32)
    report = ParityReport()
    random_weights = manifest.pretrained == "none" or "random" in str(manifest.pretrained)
    if random_weights and thresholds.top1_agreement is not None:
        # Random CLIP weights give near-tied logits, whose argmax flips on any rounding: top-1 is
        # shown but only the cosines decide. Bundles with real weights are held to top-1 as well.
        thresholds = replace(thresholds, top1_agreement=None)
        report.notes.append("random CLIP weights: top-1 agreement is shown but not required (near-tied logits); "
                            "the cosines decide")
    num_classes = len(manifest.class_names)
    num_texts = num_classes * max(1, len(manifest.templates)) + len(EXTRA_TEXTS)
    for suffix, sizes in sizes_to_check(ranges, graph, num_classes, num_texts):
        feeds = make_feeds(bundle, manifest, graph, sizes, seed)
        expected = dict(zip(output_names, session.run(output_names, feeds)))
        got = run_engine(feeds)
        for name in output_names:
            if name not in got:
                raise RadaError(f"the engine has no output {name!r} (it has {sorted(got)})", "rebuild the engine from this bundle")
            report.results.append(compare(graph, precision, name + suffix, expected[name], got[name], name == "logits", thresholds))
    if precision == "fp32":
        report.notes.append("FP32 engine built with TF32 (fp16 thresholds apply)" if tf32
                            else "FP32 engine built with TF32 off (fp32 thresholds apply)")
    return report
