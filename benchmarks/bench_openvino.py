"""ONNX Runtime against OpenVINO on the CPU, one process, the same fused graphs and inputs.

    python benchmarks/bench_openvino.py [BUNDLE] [--batch 1 8] [--runs 12]

Runs, alternating call by call so that load from other processes hits all alike (medians):

- ONNX Runtime: the FP32 graph (`model.onnx`, the reference of every ratio) and the INT8 Q/DQ graph;
- OpenVINO: the FP32 graph in f32, the same graph in bf16 (only where the CPU computes bf16 natively:
  what the runtime runs by default there), the INT8 graph with its float layers in f32 (the runtime's
  choice for ``precision="int8"``) and in bf16.

It prints the CPU (model, cores, the flags that decide bf16 and INT8 speed), the versions, each run's
median latency, its speed against ONNX Runtime FP32 at the same batch, and its image-feature cosine
against ONNX Runtime FP32 (INT8 runs: against ONNX Runtime's INT8 graph too). Without BUNDLE, a
ViT-B-32 bundle with random weights is exported to a temporary folder and calibrated on generated
images. Not a test: it prints figures and exits 0.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


@dataclass
class Candidate:
    label: str
    graph: str  # "fp32" or "int8"
    run: Callable[[np.ndarray], np.ndarray]  # input batch -> image features


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", type=Path, help="bundle folder with model.int8 (default: ViT-B-32 in a temp dir)")
    parser.add_argument("--model", default="ViT-B-32", help="open_clip model for the default bundle")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--runs", type=int, default=12, help="timed calls per run and batch")
    parser.add_argument("--warmup", type=int, default=2)
    return parser.parse_args(argv)


def cpu_description() -> str:
    """The CPU's model name, its logical cores, and which of FLAGS it has (Linux: /proc/cpuinfo)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name in ("", platform.machine(), platform.processor()):
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    have = [f for f in FLAGS if f in flags] or ["flags not readable"]
    return f"{name}, {os.cpu_count()} logical cores, {' '.join(have)}"


def _default_bundle(root: Path, model: str) -> Path:
    from rada_export.calibration.bundle import CalibrateRequest, calibrate_bundle
    from rada_export.export.bundle import ExportRequest, export_bundle
    from rada_export.synthetic import CLASSES, make_image_folder

    out = root / "bundle"
    print(f"exporting {model} (random weights) to {out} and calibrating it ...", flush=True)
    export_bundle(ExportRequest(out=out, model=model, pretrained="none", classes=[c[0] for c in CLASSES], verify=False))
    make_image_folder(root / "images", images_per_class=8, size=256)
    calibrate_bundle(CalibrateRequest(bundle=out, images=root / "images", samples=32, graph="model", accept_degraded=True,
                                      holdout=16, cache_dir=root / "cache"))
    return out


def candidates(bundle: Path) -> list[Candidate]:
    from rada_export.runtimes.manifest import read_manifest
    from rada_export.runtimes.openvino_backend import OpenVinoPlan, OpenVinoRunner, cpu_info
    from rada_export.runtimes.ort_session import create_session

    manifest = read_manifest(bundle)
    feed = "frames" if manifest.embed_preprocess else "pixels"
    out = []
    for graph in ("fp32", "int8"):
        entry = manifest.graph("model", graph)
        session = create_session(bundle / entry.file, "cpu", entry.precision)
        out.append(Candidate(f"ONNX Runtime {graph.upper()}", graph,
                             lambda x, s=session: s.run(["image_features"], {feed: x})[0]))
    cpu = cpu_info()
    hints = ["f32", "bf16"] if cpu.native_bf16 else ["f32"]
    for graph in ("fp32", "int8"):
        entry = manifest.graph("model", graph)
        for hint in hints:
            runner = OpenVinoRunner(bundle / entry.file, entry, OpenVinoPlan(hint, "benchmark", cpu))
            out.append(Candidate(f"OpenVINO {graph.upper()} graph, {hint}", graph,
                                 lambda x, r=runner: r.run({feed: x})["image_features"]))
    return out


def _input(bundle: Path, batch: int, rng: np.random.Generator) -> np.ndarray:
    from rada_export.runtimes.manifest import read_manifest

    manifest = read_manifest(bundle)
    height, width = manifest.preprocess.size
    if manifest.embed_preprocess:
        return rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    return rng.standard_normal((batch, 3, height, width), dtype=np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def measure(runs: list[Candidate], x: np.ndarray, repeats: int, warmup: int) -> dict[str, float]:
    """Median milliseconds per call of each candidate, calls alternating between them."""
    for candidate in runs:
        for _ in range(warmup):
            candidate.run(x)
    times: dict[str, list[float]] = {c.label: [] for c in runs}
    for _ in range(repeats):
        for candidate in runs:
            start = time.perf_counter()
            candidate.run(x)
            times[candidate.label].append(time.perf_counter() - start)
    return {label: 1e3 * statistics.median(t) for label, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import onnxruntime
    import openvino

    with tempfile.TemporaryDirectory(prefix="bench-openvino-") as tmp:
        bundle = args.bundle or _default_bundle(Path(tmp), args.model)
        from rada_export.runtimes.manifest import read_manifest

        if "model.int8" not in read_manifest(bundle).graphs:
            print(f"{bundle} has no model.int8 graph: run `rada-export calibrate --bundle {bundle} --images DIR --graph model` first",
                  file=sys.stderr)
            return 2
        model = read_manifest(bundle).model
        runs = candidates(bundle)
        rng = np.random.default_rng(0)
        rows = []
        for batch in args.batch:
            x = _input(bundle, batch, rng)
            features = {c.label: c.run(x) for c in runs}
            ms = measure(runs, x, args.runs, args.warmup)
            rows.append((batch, ms, features))
    reference, reference_int8 = runs[0].label, runs[1].label
    print(f"\nCPU: {cpu_description()}; load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"ONNX Runtime {onnxruntime.__version__}, OpenVINO {openvino.__version__.split('-')[0]}; "
          f"median of {args.runs} alternating calls; bundle {model}")
    print("\n| run | batch | ms | speed vs ONNX Runtime FP32 | feature cos vs ONNX Runtime FP32 | vs ONNX Runtime INT8 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for batch, ms, features in rows:
        for c in runs:
            versus_int8 = f"{cosine(features[c.label], features[reference_int8]):.5f}" if c.graph == "int8" else "-"
            print(f"| {c.label} | {batch} | {ms[c.label]:.1f} | {ms[reference] / ms[c.label]:.2f}x "
                  f"| {cosine(features[c.label], features[reference]):.5f} | {versus_int8} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
