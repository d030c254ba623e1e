"""MobileCLIP image encoder exported with and without reparameterization: ORT CPU latency and cosine.

    python benchmarks/bench_mobileclip.py [--model MobileCLIP-S1] [--batch 1 8] [--runs 20]

Exports open_clip's image encoder twice in one run, as built (training-time branches) and folded by
timm's reparameterize_model (what `rada-export onnx` exports), and prints the node counts, ONNX
Runtime CPU latency (medians, the two graphs alternating so that load from other processes hits both
alike), their ratio, and the feature cosine of each graph against the unfolded PyTorch model.

Random weights, with BatchNorm statistics randomised so that folding them is not a no-op; the
latency does not depend on the weights. Not a test: it prints figures and exits 0.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="MobileCLIP-S1", help="open_clip MobileCLIP model (MobileCLIP-S1, -S2, MobileCLIP2-S0...)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--runs", type=int, default=20, help="timed runs per graph and batch")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: ONNX Runtime's)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import onnx
    import onnxruntime as ort
    import torch

    from rada_export.clip import load_clip
    from rada_export.export.modules import ImageEncoder
    from rada_export.export.onnx_io import DEFAULT_OPSET, GraphSpec, export_module
    from rada_export.export.reparam import for_export

    clip = load_clip(args.model, "none")
    gen = torch.Generator().manual_seed(0)
    for m in clip.model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
            m.running_var.copy_(torch.empty(m.running_var.shape).uniform_(0.5, 1.5, generator=gen))
    folded, changed = for_export(clip.model)
    if not changed:
        print(f"{args.model} has no reparameterizable branches")
        return 0
    h, w = clip.preprocess_config.size
    spec = GraphSpec(("pixels",), ("image_features",), {"pixels": {0: "batch"}, "image_features": {0: "batch"}})
    opts = ort.SessionOptions()
    if args.threads:
        opts.intra_op_num_threads = args.threads
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        sessions, counts = {}, {}
        for name, model in (("as built", clip.model), ("reparameterized", folded)):
            path = Path(tmp) / f"{name.replace(' ', '_')}.onnx"
            export_module(ImageEncoder(model).eval(), (torch.randn(2, 3, h, w),), path, spec, DEFAULT_OPSET, "torchscript", 2**31)
            ops = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
            counts[name] = ops
            sessions[name] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        print(f"{args.model}, ONNX Runtime {ort.__version__} CPU, median of {args.runs} runs")
        for name, ops in counts.items():
            print(f"  {name:16s} {sum(ops.values())} nodes: {ops['Conv']} Conv, {ops['BatchNormalization']} BatchNormalization")
        pixels = rng.standard_normal((8, 3, h, w), dtype=np.float32)
        with torch.no_grad():
            ref = ImageEncoder(clip.model).eval()(torch.from_numpy(pixels)).numpy()
        for name, sess in sessions.items():
            out = sess.run(None, {"pixels": pixels})[0]
            cos = np.sum(out * ref, axis=1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))
            print(f"  {name:16s} cosine vs PyTorch (unfolded): min {cos.min():.7f}")
        for batch in args.batch:
            x = {"pixels": rng.standard_normal((batch, 3, h, w), dtype=np.float32)}
            times = {name: [] for name in sessions}
            for _ in range(args.warmup):
                for sess in sessions.values():
                    sess.run(None, x)
            for _ in range(args.runs):
                for name, sess in sessions.items():
                    start = time.perf_counter()
                    sess.run(None, x)
                    times[name].append(time.perf_counter() - start)
            med = {k: 1000 * statistics.median(v) for k, v in times.items()}
            print(f"  batch {batch}: as built {med['as built']:.1f} ms, reparameterized {med['reparameterized']:.1f} ms "
                  f"({med['as built'] / med['reparameterized']:.2f}x faster)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
