"""ONNX Runtime CPU latency and accuracy of a bundle's INT8 Q/DQ fused graphs against its FP32 graph.

    python benchmarks/bench_int8.py [BUNDLE] [--images DIR] [--batch 1 8] [--runs 20]

Three graphs in one run: FP32 (`model`), INT8 Q/DQ over FP32 (`model.int8`, the one the runtime uses
on ONNX Runtime) and the same Q/DQ over FP16 (`model.int8_fp16`, the one TensorRT engines build
from). It prints their median latencies, the speed ratios against FP32, and the image-feature
cosine against FP32 on images of the calibration folder.

Without BUNDLE, a ViT-B-32 bundle with random weights is exported to a temporary folder and
calibrated on generated images (random weights: the speed and the FP32 agreement are what matter
here, not accuracy). A BUNDLE without the INT8 graphs is calibrated in place only when --images is
given.

The graphs' runs alternate, so that load from other processes on a shared machine hits all alike;
the figures are medians. Not a test: it prints figures and exits 0.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", type=Path, help="bundle folder (default: export ViT-B-32 to a temp dir)")
    parser.add_argument("--images", type=Path, help="calibration images, when the bundle has no model.int8 graph")
    parser.add_argument("--model", default="ViT-B-32", help="open_clip model for the default bundle")
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--runs", type=int, default=20, help="timed runs per graph and batch")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: ONNX Runtime's)")
    parser.add_argument("--cosine-images", type=int, default=32, help="images of the calibration folder for the cosine")
    return parser.parse_args(argv)


def _export_default(root: Path, model: str) -> Path:
    from rada_export.export.bundle import ExportRequest, export_bundle
    from rada_export.synthetic import CLASSES

    out = root / "bundle"
    print(f"exporting {model} (random weights) to {out} ...", flush=True)
    export_bundle(ExportRequest(out=out, model=model, pretrained="none", classes=[c[0] for c in CLASSES], verify=False))
    return out


def _calibrate(bundle: Path, images: Path, samples: int, cache: Path) -> None:
    from rada_export.calibration.bundle import CalibrateRequest, calibrate_bundle

    print(f"calibrating {bundle} on {images} ...", flush=True)
    result = calibrate_bundle(CalibrateRequest(bundle=bundle, images=images, samples=samples, graph="model",
                                               accept_degraded=True, holdout=16, cache_dir=cache))
    print(f"  {result.report.describe()}")


def _inputs(manifest, batch: int, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    height, width = manifest.preprocess.size
    if manifest.embed_preprocess:
        return "frames", rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    return "pixels", rng.standard_normal((batch, 3, height, width), dtype=np.float32)


GRAPHS = {"fp32": ("model", "fp32"), "int8": ("model", "int8"), "int8_fp16": ("model", "int8_fp16")}
LABELS = {"fp32": "FP32", "int8": "INT8 (Q/DQ over FP32)", "int8_fp16": "INT8 (Q/DQ over FP16)"}


def _sessions(bundle: Path, threads: int | None) -> dict:
    from rada_export.runtimes.manifest import read_manifest
    from rada_export.runtimes.ort_session import create_session

    manifest = read_manifest(bundle)
    return {key: create_session(bundle / manifest.graph(*GRAPHS[key]).file, "cpu", manifest.graph(*GRAPHS[key]).precision,
                                threads) for key in GRAPHS}


def time_graphs(bundle: Path, batches: list[int], runs: int, warmup: int, threads: int | None) -> list[dict]:
    from rada_export.runtimes.manifest import read_manifest

    manifest = read_manifest(bundle)
    sessions = _sessions(bundle, threads)
    rng = np.random.default_rng(0)
    rows = []
    for batch in batches:
        name, x = _inputs(manifest, batch, rng)
        for session in sessions.values():
            for _ in range(warmup):
                session.run(None, {name: x})
        times: dict[str, list[float]] = {k: [] for k in sessions}
        for _ in range(runs):
            for key, session in sessions.items():
                start = time.perf_counter()
                session.run(None, {name: x})
                times[key].append(time.perf_counter() - start)
        row = {"batch": batch}
        for key in sessions:
            row[f"{key}_ms"] = 1e3 * statistics.median(times[key])
        rows.append(row)
    return rows


def feature_cosines(bundle: Path, images: Path | None, limit: int, threads: int | None) -> tuple[dict[str, tuple[float, float]], int]:
    """(mean, min) image-feature cosine of each INT8 graph against FP32 on up to ``limit`` images."""
    from rada_export.calibration.dataset import candidate_files, decode_frame, to_pixels
    from rada_export.runtimes.manifest import read_manifest

    if images is None:
        return {}, 0
    manifest = read_manifest(bundle)
    frames = [f for f in (decode_frame(p, manifest.preprocess) for p in candidate_files(images)[-limit:]) if f is not None]
    if not frames:
        return {}, 0
    batch = np.stack(frames)
    feed = ("frames", batch) if manifest.embed_preprocess else ("pixels", to_pixels(batch, manifest.preprocess))
    sessions = _sessions(bundle, threads)
    feats = {k: np.concatenate([s.run(["image_features"], {feed[0]: feed[1][i:i + 8]})[0] for i in range(0, len(batch), 8)])
             for k, s in sessions.items()}
    out = {}
    for key in ("int8", "int8_fp16"):
        a, b = feats["fp32"].astype(np.float64), feats[key].astype(np.float64)
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        out[key] = (float(cos.mean()), float(cos.min()))
    return out, len(batch)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import onnxruntime

    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        tmp = Path(tmp)
        bundle = args.bundle
        images = args.images
        if bundle is None:
            bundle = _export_default(tmp, args.model)
            if images is None:
                from rada_export.synthetic import make_image_folder

                images = tmp / "images"
                make_image_folder(images, images_per_class=max(4, -(-(args.calib_samples + 16) // 6)), size=256)
        from rada_export.runtimes.manifest import read_manifest

        manifest = read_manifest(bundle)
        if not {"model.int8", "model.int8_fp16"} <= set(manifest.graphs):
            if images is None:
                print(f"{bundle} has no INT8 fused graphs (model.int8, model.int8_fp16): run `rada-export calibrate "
                      f"--bundle {bundle} --images DIR --graph model` first, or pass --images", file=sys.stderr)
                return 2
            _calibrate(bundle, images, args.calib_samples, tmp / "cache")
        rows = time_graphs(bundle, args.batch, args.runs, args.warmup, args.threads)
        cosines, n_images = feature_cosines(bundle, images, args.cosine_images, args.threads)
    print(f"\nONNX Runtime {onnxruntime.__version__} CPU ({platform.processor() or platform.machine()}), "
          f"threads: {args.threads or 'default'}, median of {args.runs} runs, bundle model {manifest.model}")
    print(f"{'batch':>5}  {'FP32 ms':>9}  {'int8 ms':>9}  {'int8_fp16 ms':>12}  "
          f"{'int8 speed':>10}  {'int8_fp16 speed':>15}  {'int8_fp16 vs int8':>17}")
    for r in rows:
        print(f"{r['batch']:>5}  {r['fp32_ms']:>9.1f}  {r['int8_ms']:>9.1f}  {r['int8_fp16_ms']:>12.1f}  "
              f"{r['fp32_ms'] / r['int8_ms']:>9.2f}x  {r['fp32_ms'] / r['int8_fp16_ms']:>14.2f}x  "
              f"{r['int8_ms'] / r['int8_fp16_ms']:>16.2f}x")
    print("int8: Q/DQ over FP32 (model.int8); int8_fp16: Q/DQ over FP16 (model.int8_fp16). "
          "speed: FP32 latency / its latency (above 1: faster than FP32)")
    if cosines:
        print(f"image-feature cosine against FP32 on {n_images} image(s) of the calibration folder:")
        for key, (mean, low) in cosines.items():
            print(f"  {LABELS[key]:<24} mean {mean:.5f}  min {low:.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
