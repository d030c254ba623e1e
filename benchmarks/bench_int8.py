"""ONNX Runtime CPU latency of a bundle's INT8 Q/DQ fused graph against its FP32 graph.

    python benchmarks/bench_int8.py [BUNDLE] [--images DIR] [--batch 1 8] [--runs 20]

Without BUNDLE, a ViT-B-32 bundle with random weights is exported to a temporary folder and
calibrated on generated images (random weights: the speed is what matters here, not accuracy).
A BUNDLE without an INT8 graph is calibrated in place only when --images is given.

FP32 and INT8 runs alternate, so that load from other processes on a shared machine hits both
alike; the figures are medians. Not a test: it prints figures and exits 0.
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


def time_graphs(bundle: Path, batches: list[int], runs: int, warmup: int, threads: int | None) -> list[dict]:
    from rada_export.runtimes.manifest import read_manifest
    from rada_export.runtimes.ort_session import create_session

    manifest = read_manifest(bundle)
    sessions = {
        "fp32": create_session(bundle / manifest.graph("model").file, "cpu", "fp32", threads),
        "int8": create_session(bundle / manifest.graph("model", "int8").file, "cpu", "int8", threads),
    }
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
        fp32, int8 = (statistics.median(times[k]) for k in ("fp32", "int8"))
        rows.append({"batch": batch, "fp32_ms": 1e3 * fp32, "int8_ms": 1e3 * int8, "speedup": fp32 / int8,
                     "fp32_img_s": batch / fp32, "int8_img_s": batch / int8})
    return rows


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
        if "model.int8" not in manifest.graphs:
            if images is None:
                print(f"{bundle} has no INT8 fused graph: run `rada-export calibrate --bundle {bundle} --images DIR --graph model`"
                      " first, or pass --images", file=sys.stderr)
                return 2
            _calibrate(bundle, images, args.calib_samples, tmp / "cache")
        rows = time_graphs(bundle, args.batch, args.runs, args.warmup, args.threads)
    print(f"\nONNX Runtime {onnxruntime.__version__} CPU ({platform.processor() or platform.machine()}), "
          f"threads: {args.threads or 'default'}, median of {args.runs} runs, bundle model {manifest.model}")
    print(f"{'batch':>5}  {'FP32 ms':>9}  {'INT8 ms':>9}  {'INT8/FP32 speed':>15}  {'FP32 img/s':>10}  {'INT8 img/s':>10}")
    for r in rows:
        print(f"{r['batch']:>5}  {r['fp32_ms']:>9.1f}  {r['int8_ms']:>9.1f}  {r['speedup']:>14.2f}x  "
              f"{r['fp32_img_s']:>10.1f}  {r['int8_img_s']:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
