"""Per open_clip family: the image graph in FP32, FP16 and INT8, their cosine and ONNX Runtime latency.

    python benchmarks/bench_families.py [--families vit resnet convnext mobileclip eva siglip coca] [--runs 10]

For each family's smallest member (random weights, built with its pretrained tag's settings, folded
for export where it has training-time branches) this exports the image encoder as `rada-export onnx`
does, converts it to FP16 (rada_export.export.fp16) and to INT8 (calibration/int8.py with the
structural selection of calibration/selection.py, calibrated on random frames), and prints one
Markdown row: the selection, FP16 and INT8 feature cosine against the FP32 graph, and ORT CPU latency
at batch 1 and 8 (FP32 and INT8 alternating, medians), with the INT8 speed-up measured in the same run.

Random weights make the cosines optimistic (see docs/families.md). Not a test: prints figures.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

FAMILIES = {
    "vit": ("ViT-B-32", "openai"),
    "resnet": ("RN50", "openai"),
    "convnext": ("convnext_tiny", None),
    "mobileclip": ("MobileCLIP-S1", "datacompdr"),
    "eva": ("EVA02-B-16", None),
    "siglip": ("ViT-B-16-SigLIP", "webli"),
    "coca": ("coca_ViT-B-32", None),
}


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--runs", type=int, default=10, help="timed runs per graph and batch")
    parser.add_argument("--calib", type=int, default=16, help="calibration frames")
    parser.add_argument("--threads", type=int, default=None)
    return parser.parse_args(argv)


def _build(model_name: str, tag: str | None):
    """The image side only (no tokenizer: SigLIP's would need the hub), built as load_clip builds it."""
    import open_clip
    import torch

    from rada_export.clip import PreprocessConfig, register_own_configs
    from rada_export.clip_source import resolve_source

    register_own_configs()
    source = resolve_source(model_name, "none", tag)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, _, _ = open_clip.create_model_and_transforms(
            model_name, pretrained=None, force_quick_gelu=source.quick_gelu, load_weights=False,
            image_mean=source.force_preprocess.get("mean"), image_std=source.force_preprocess.get("std"),
            image_interpolation=source.force_preprocess.get("interpolation"),
            image_resize_mode=source.force_preprocess.get("resize_mode"))
    return model.eval(), PreprocessConfig.from_model(model)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def run_family(name: str, work: Path, args) -> str:
    import onnx
    import torch

    from rada_export.calibration.dataset import to_pixels
    from rada_export.calibration.int8 import QuantRecipe, quantize_graph
    from rada_export.calibration.selection import select_nodes
    from rada_export.export import fp16
    from rada_export.export.modules import ImageEncoder
    from rada_export.export.onnx_io import GraphSpec, export_module, load_graph, save_graph
    from rada_export.export.reparam import for_export
    from rada_export.runtimes import manifest as mf
    from rada_export.runtimes.ort_session import create_session

    model_name, tag = FAMILIES[name]
    start = time.perf_counter()
    model, pre = _build(model_name, tag)
    folded, _ = for_export(model)
    h, w = pre.size
    spec = GraphSpec(("pixels",), ("image_features",), {"pixels": {0: "batch"}, "image_features": {0: "batch"}})
    paths = {p: work / f"{name}.{p}.onnx" for p in ("fp32", "fp16", "int8")}
    with torch.no_grad():
        export_module(ImageEncoder(folded).eval(), (torch.randn(2, 3, h, w),), paths["fp32"], spec)
    del folded, model
    save_graph(fp16.to_fp16(load_graph(paths["fp32"])), paths["fp16"])
    rng = np.random.default_rng(0)
    manifest_pre = mf.Preprocess(**pre.to_dict())
    frames = rng.integers(0, 256, size=(args.calib, h, w, 3), dtype=np.uint8)
    selection = select_nodes(onnx.load(str(paths["fp32"]), load_external_data=False))
    quantize_graph(paths["fp32"], paths["int8"], frames, manifest_pre, QuantRecipe())
    sessions = {p: create_session(paths[p], precision=p, threads=args.threads) for p in paths}
    probe = to_pixels(rng.integers(0, 256, size=(8, h, w, 3), dtype=np.uint8), manifest_pre)
    out = {p: s.run(None, {"pixels": probe})[0] for p, s in sessions.items()}
    lat = {}
    for batch in (1, 8):
        x = {"pixels": np.ascontiguousarray(np.resize(probe, (batch, 3, h, w)))}
        times = {"fp32": [], "int8": []}
        for p in times:
            sessions[p].run(None, x)
        for _ in range(args.runs):
            for p in times:
                t = time.perf_counter()
                sessions[p].run(None, x)
                times[p].append(1000 * (time.perf_counter() - t))
        lat[batch] = {p: statistics.median(v) for p, v in times.items()}
    row = (f"| {name} ({model_name}) | {selection.tower}: {len(selection.nodes)} layers "
           f"({', '.join(selection.op_types)}) | {_cos(out['fp32'], out['fp16']):.5f} | {_cos(out['fp32'], out['int8']):.4f} | "
           + " | ".join(f"{lat[b]['fp32']:.1f} / {lat[b]['int8']:.1f} ({lat[b]['fp32'] / lat[b]['int8']:.2f}x)" for b in (1, 8))
           + " |")
    print(f"  [{name}: {time.perf_counter() - start:.0f} s; kept float: {selection.kept_float}]", flush=True)
    return row


def main(argv=None) -> int:
    args = _parse(argv)
    import onnxruntime as ort

    print(f"ONNX Runtime {ort.__version__} CPU; random weights; latency ms FP32 / INT8 (speed-up), median of {args.runs}")
    print("| family | INT8 selection | FP16 cosine | INT8 cosine | batch 1 | batch 8 |")
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.families:
            try:
                print(run_family(name, Path(tmp), args), flush=True)
            except Exception as err:  # one family failing must not hide the others' figures
                print(f"| {name} | failed: {type(err).__name__}: {str(err).splitlines()[0][:200]} | | | | |", flush=True)
            for f in Path(tmp).glob(f"{name}.*"):
                f.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
