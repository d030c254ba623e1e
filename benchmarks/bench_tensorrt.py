"""TensorRT engine latency and throughput (FP32 / FP16 / INT8 at batch 1, 8, 32) against PyTorch eager.

    python benchmarks/bench_tensorrt.py                      # exports a ViT-B-32 bundle (random weights)
    python benchmarks/bench_tensorrt.py --bundle bundle/ --runs 100

Builds the fused graph's engines for this GPU into the bundle (engines/), times them through the
torch-free runtime (``TensorRTEngine.run``: host-to-device copy, execute, device-to-host copy,
synchronise), then times the same fused model in PyTorch eager on the same GPU, in FP32 and in FP16
autocast, with the same host-side input (copy included). Without TensorRT, the CUDA runtime or a GPU it
says which is missing and exits 0 (libcudart through ctypes; no cuda-python). INT8 needs the bundle's Q/DQ graph (`rada-export calibrate`);
without it the INT8 rows are skipped, with the reason.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from rada_export.timing import median_ms
from rada_export.runtimes.bundle import layout



def _export(model: str, out: Path) -> Path:
    from rada_export.export.bundle import ExportRequest, export_bundle

    classes = [f"class {i}" for i in range(10)]
    print(f"exporting a {model} bundle with random weights into {out} ...", flush=True)
    export_bundle(ExportRequest(out=out, model=model, pretrained="none", classes=classes, fp16=True, max_batch=32))
    return out


def _torch_rows(bundle: Path, batches: list[int], runs: int, warmup: int) -> dict[tuple[str, int], float]:
    try:
        import torch
    except ImportError:
        print("PyTorch is not installed: no eager baseline")
        return {}
    if not torch.cuda.is_available():
        print("PyTorch sees no CUDA GPU: no eager baseline")
        return {}
    from rada_export.checkpoint import load_head
    from rada_export.clip import load_clip
    from rada_export.export.modules import FusedModel
    from rada_export.runtimes.manifest import read_manifest

    manifest = read_manifest(bundle)
    clip = load_clip(manifest.model, manifest.pretrained)
    head = load_head(bundle / layout.HEAD_FILE).head
    head.logit_scale = manifest.head.logit_scale
    text = torch.from_numpy(np.load(bundle / layout.TEXT_FEATURES))
    model = FusedModel(clip.model, head, text).eval().cuda()
    height, width = manifest.preprocess.size
    rows = {}
    for label, autocast in (("torch fp32", False), ("torch fp16 autocast", True)):
        for batch in batches:
            pixels = np.random.default_rng(0).standard_normal((batch, 3, height, width)).astype(np.float32)

            def step():
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=autocast):
                    out = model(torch.from_numpy(pixels).cuda(non_blocking=False))
                    _ = [o.float().cpu() for o in out]
                torch.cuda.synchronize()

            rows[(label, batch)] = median_ms(step, runs, warmup) / 1000
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="bundle folder (default: export --model with random weights)")
    parser.add_argument("--model", default="ViT-B-32", help="open_clip model to export when --bundle is not given")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "fp16", "int8"])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--no-verify", action="store_true", help="skip each engine's parity check")
    args = parser.parse_args(argv)

    from rada_export.errors import RadaError, VerificationError
    from rada_export.runtimes.tensorrt_engine import TensorRTEngine
    from rada_export.runtimes.trt_environment import diagnose_environment

    missing, env = diagnose_environment()
    if missing:
        print("bench_tensorrt: cannot run here, missing " + ", ".join(m.component for m in missing))
        for m in missing:
            print(f"  - {m.component}: {m.detail}\n    how to get it: {m.fix}")
        return 0
    print(f"TensorRT {env.tensorrt_version} on {env.device.name} (compute capability {env.device.compute_capability})")

    with tempfile.TemporaryDirectory(prefix="bench-trt-") as scratch:
        bundle = args.bundle
        if bundle is None:
            try:
                bundle = _export(args.model, Path(scratch) / "bundle")
            except ImportError as err:
                print(f"bench_tensorrt: cannot export a bundle here ({err}); pass --bundle")
                return 0
        from rada_export.runtimes.manifest import read_manifest
        from rada_export.tensorrt.build import BuildRequest, build_engine

        manifest = read_manifest(bundle)
        height, width = manifest.preprocess.size
        max_batch = max(args.batches)
        rows: dict[tuple[str, int], float] = {}
        cache = Path(scratch) / "timing.cache"
        for precision in args.precisions:
            try:
                req = BuildRequest(bundle=bundle, graph="model", precision=precision, min_batch=1, opt_batch=min(8, max_batch),
                                   max_batch=max_batch, timing_cache=cache, verify=not args.no_verify)
                result = build_engine(req, environment=env)
            except (RadaError, VerificationError) as err:
                print(f"TensorRT {precision}: skipped ({getattr(err, 'problem', err)})")
                continue
            print(f"TensorRT {precision}: built in {result.build_seconds:.1f} s -> {result.engine_path}")
            with TensorRTEngine(result.engine_path, manifest, environment=env) as engine:
                name = engine.input_names[0]
                for batch in args.batches:
                    if engine.dtype(name) == np.uint8:
                        feed = np.random.default_rng(0).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
                    else:
                        feed = np.random.default_rng(0).standard_normal((batch, 3, height, width)).astype(np.float32)
                    rows[(f"TensorRT {precision}", batch)] = median_ms(lambda: engine.run({name: feed}), args.runs, args.warmup) / 1000
                # A batch twice the profile's max: run() splits it; timed against two calls by hand.
                big = np.concatenate([feed, feed])
                split = median_ms(lambda: engine.run({name: big}), args.runs, args.warmup) / 1000
                by_hand = median_ms(lambda: [engine.run({name: feed}) for _ in range(2)], args.runs, args.warmup) / 1000
                rows[(f"TensorRT {precision} split", len(big))] = split
                print(f"TensorRT {precision}: batch {len(big)} split to the profile: {split / by_hand:.3f}x two calls of {len(feed)} by hand")
        if not manifest.embed_preprocess:
            rows.update(_torch_rows(bundle, args.batches, args.runs, args.warmup))

    print(f"\n{'backend':<22}{'batch':>6}{'latency ms':>13}{'img/s':>10}{'vs torch fp32':>15}")
    for (label, batch), seconds in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        base = rows.get(("torch fp32", batch))
        ratio = f"{base / seconds:.2f}x" if base else "-"
        print(f"{label:<22}{batch:>6}{1000 * seconds:>13.2f}{batch / seconds:>10.1f}{ratio:>15}")
    print("\nlatency: median wall time of one call, host input to host output (copies included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
