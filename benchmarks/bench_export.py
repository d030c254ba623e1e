"""Export time and ONNX Runtime CPU latency of the fused graph against PyTorch eager.

Prints, for one model: the time to export the fused graph; the latency of ONNX Runtime (CPU) and
of PyTorch eager at batch 1 and 8 on the same thread count, with their ratio; and the RAda head's
share of the fused latency at K = 10, 100 and 1000 classes.
Targets: ONNX Runtime no slower than PyTorch eager; the head under 5 % of the fused latency at K = 100.

    python benchmarks/bench_export.py [--model ViT-B-32] [--threads 2] [--repeats 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from rada_export.timing import median_ms

from rada_export.clip import load_clip
from rada_export.export.modules import FusedModel, HeadGraph
from rada_export.export.onnx_io import GraphSpec, export_module
from rada_export.head import RAdaHead
from rada_export.runtimes.ort_session import create_session



def random_head(dim: int, scale: float) -> RAdaHead:
    torch.manual_seed(0)
    head = RAdaHead(dim, logit_scale=scale)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.02)
    return head.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--classes", default="10,100,1000")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console()

    clip = load_clip(args.model, "none")
    h, w = clip.preprocess_config.size
    dim = clip.embed_dim
    fused_spec = GraphSpec(("pixels",), ("logits", "image_features"),
                           {"pixels": {0: "batch"}, "logits": {0: "batch"}, "image_features": {0: "batch"}})
    head_spec = GraphSpec(("image_features", "text_features"), ("logits",),
                          {"image_features": {0: "batch"}, "text_features": {0: "num_classes"}, "logits": {0: "batch", 1: "num_classes"}})
    speed = Table(title=f"{args.model}: fused graph, ONNX Runtime CPU vs PyTorch eager ({args.threads} threads)")
    for col in ("K", "batch", "PyTorch ms", "ORT ms", "PyTorch / ORT", "head ms (ORT)", "head share"):
        speed.add_column(col)
    with tempfile.TemporaryDirectory() as tmp:
        for k in [int(x) for x in args.classes.split(",")]:
            text = torch.nn.functional.normalize(torch.randn(k, dim), dim=-1)
            head = random_head(dim, clip.logit_scale)
            fused = FusedModel(clip.model, head, text).eval()
            path = Path(tmp) / f"model{k}.onnx"
            start = time.perf_counter()
            export_module(fused, (torch.randn(2, 3, h, w),), path, fused_spec)
            export_s = time.perf_counter() - start
            head_path = Path(tmp) / f"head{k}.onnx"
            export_module(HeadGraph(head), (torch.nn.functional.normalize(torch.randn(2, dim), dim=-1), text), head_path, head_spec)
            session = create_session(path, threads=args.threads)
            head_session = create_session(head_path, threads=args.threads)
            for batch in (1, 8):
                pixels = np.random.default_rng(0).standard_normal((batch, 3, h, w)).astype(np.float32)
                pixels_t = torch.from_numpy(pixels)
                with torch.no_grad():
                    eager = median_ms(lambda: fused(pixels_t), args.repeats)
                ort_ms = median_ms(lambda: session.run(None, {"pixels": pixels}), args.repeats)
                feats = session.run(None, {"pixels": pixels})[1]
                head_ms = median_ms(lambda: head_session.run(None, {"image_features": feats, "text_features": text.numpy()}), args.repeats)
                speed.add_row(str(k), str(batch), f"{eager:.1f}", f"{ort_ms:.1f}", f"{eager / ort_ms:.2f}x",
                              f"{head_ms:.2f}", f"{100 * head_ms / ort_ms:.1f} %")
            console.print(f"K={k}: exported the fused graph in {export_s:.1f} s")
    console.print(speed)


if __name__ == "__main__":
    main()
