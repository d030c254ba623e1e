"""The device runtime's costs on a real-size bundle (ONNX Runtime, CPU).

Prints, in one run and on one thread count:
- `predict` latency at batch 1 and 8 against PyTorch eager (open_clip preprocessing + encoder +
  head), as a ratio;
- one continual adapt step as a share of one predict, at K = 10 and 100 (target: under 10 %);
- an episodic step with 16 views against 16 single predictions;
- the peak RSS of a fresh process that loads the bundle and predicts (no torch in it).
RSS growth over 100,000 continual steps is the head's alone: `benchmarks/bench_tta.py`.

    python benchmarks/bench_runtime.py [--bundle DIR | --model ViT-B-16] [--repeats 10]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from rada_export.timing import median_ms
from rada_export.runtimes.bundle import layout



def images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)) for _ in range(n)]


def class_names(k: int) -> list[str]:
    return [f"object number {i}" for i in range(k)]


def peak_rss_of_a_device_process(bundle: Path) -> tuple[float, bool]:
    code = f"""
import sys
import numpy as np
from PIL import Image
from rada_export.bench import peak_rss_mb
from rada_export.runtimes import load_bundle
rt = load_bundle({str(bundle)!r}, device="cpu")
rt.predict([Image.fromarray(np.zeros((300, 400, 3), np.uint8))] * 8)
print(peak_rss_mb(), "torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), out[1] == "True"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from rada_export.checkpoint import load_head
    from rada_export.clip import load_clip
    from rada_export.export.bundle import ExportRequest, export_bundle
    from rada_export.runtimes import Head, TTAConfig, load_bundle
    from rada_export.runtimes.preprocess import preprocess as rt_preprocess

    torch.set_num_threads(args.threads)
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle
        if bundle is None:
            bundle = Path(tmp) / "bundle"
            console.print(f"exporting a {args.model} bundle (random weights, 100 classes)...")
            export_bundle(ExportRequest(out=bundle, model=args.model, pretrained="none", classes=class_names(100), verify=False))
        rt = load_bundle(bundle, backend="onnxruntime", device="cpu")
        clip = load_clip(rt.manifest.model, rt.manifest.pretrained)
        head = load_head(bundle / layout.HEAD_FILE).head.eval()
        text = torch.from_numpy(np.load(bundle / layout.TEXT_FEATURES))

        def eager(batch):
            with torch.no_grad():
                pixels = torch.stack([clip.preprocess(img) for img in batch])
                feats = torch.nn.functional.normalize(clip.model.encode_image(pixels), dim=-1)
                return head(feats, text)

        table = Table(title=f"{rt.manifest.model}: runtime (ONNX Runtime CPU) against PyTorch eager, {args.threads} threads")
        for col in ("measure", "runtime ms", "baseline ms", "ratio"):
            table.add_column(col)
        for batch in (1, 8):
            imgs = images(batch)
            ours = median_ms(lambda: rt.predict(imgs), args.repeats)
            theirs = median_ms(lambda: eager(imgs), args.repeats)
            table.add_row(f"predict, batch {batch} (baseline: PyTorch eager)", f"{ours:.1f}", f"{theirs:.1f}",
                          f"{theirs / ours:.2f}x faster" if ours < theirs else f"{ours / theirs:.2f}x slower")

        img = images(1)
        # The adaptation itself runs in the numpy head on the encoder's features, so it is timed there
        # (the encoder's jitter on a shared machine is larger than the step) and set against a whole
        # predict. Every frame is confident (e_margin=1), the worst case; each timed call is a whole
        # cycle of `continual_batch` frames, so the step that ends a cycle is counted, amortised.
        features = rt.encode(rt_preprocess(img, rt.manifest.preprocess))
        for k in (10, 100):
            frozen = load_bundle(bundle, backend="onnxruntime", device="cpu")
            frozen.set_classes(class_names(k))
            predict = median_ms(lambda: frozen.predict(img), args.repeats)
            for label, config in (("default: a step per 16 frames", TTAConfig(mode="continual", e_margin=1.0)),
                                  ("a step on every frame", TTAConfig(mode="continual", e_margin=1.0, continual_batch=1))):
                head = Head(frozen.head.weights(deployed=True), frozen.head.text_features,
                            logit_scale=rt.manifest.logit_scale, tta=config)
                cycle = config.continual_batch
                adapt = median_ms(lambda: [head.adapt(features) for _ in range(cycle)], args.repeats) / cycle
                plain = median_ms(lambda: [head.logits(features) for _ in range(cycle)], args.repeats) / cycle
                table.add_row(f"continual TTA per frame, K={k} ({label}; baseline: one predict)",
                              f"{adapt - plain:.2f}", f"{predict:.1f}", f"{100 * (adapt - plain) / predict:.1f} % of a predict")

        episodic = load_bundle(bundle, backend="onnxruntime", device="cpu", tta=TTAConfig(mode="episodic", views=16))
        single = load_bundle(bundle, backend="onnxruntime", device="cpu")
        ep = median_ms(lambda: episodic.predict(img, adapt=True), max(3, args.repeats // 3))
        sixteen = median_ms(lambda: [single.predict(img) for _ in range(16)], max(3, args.repeats // 3))
        table.add_row("episodic step, 16 views (baseline: 16 single predicts)", f"{ep:.1f}", f"{sixteen:.1f}", f"{ep / sixteen:.2f}x")
        rss, torch_loaded = peak_rss_of_a_device_process(bundle)
        table.add_row("peak RSS of a device process: load + predict batch 8 (MB)", f"{rss:.0f}", "-",
                      "torch imported!" if torch_loaded else "no torch")
        console.print(table)


if __name__ == "__main__":
    main()
