"""Frozen-encoder head against `train --finetune`, and one process against torchrun ranks.

On a generated labelled set (coloured shapes, the tiny ViT's 64 px) and a held-out test set drawn
with another seed: test top-1 of the frozen-encoder head and of the fine-tuned model, the wall
time of each command, and the largest weight difference between one process and N gloo ranks.

    python benchmarks/bench_finetune.py [--images-per-class 12] [--ft-epochs 10] [--nproc 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from rada_export.checkpoint import load_clip_for_checkpoint, load_head
from rada_export.clip import load_clip
from rada_export.images import open_image, scan_image_folder
from rada_export.synthetic import make_image_folder

MODEL = ["--model", "rada-tiny-ViT", "--pretrained", "none", "--quiet"]
WARM = ["--epochs", "10", "--aug-copies", "2", "--val-fraction", "0.25"]
# A random tiny ViT needs a far larger encoder learning rate than a pretrained CLIP's 1e-5 default.
FT = ["--finetune", "--encoder-lr", "1e-3", "--ft-head-lr", "1e-3", "--ft-weight-decay", "0", "--ft-batch-size", "12"]


def run(cmd: list[str]) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode:
        sys.exit(result.stdout + result.stderr)
    return time.perf_counter() - start


@torch.no_grad()
def test_accuracy(ckpt_path: Path, test: Path) -> float:
    ckpt = load_head(ckpt_path)
    clip = load_clip_for_checkpoint(ckpt, ckpt.metadata.model, None)
    images = scan_image_folder(test)
    pixels = torch.stack([clip.preprocess(open_image(p)) for p in images.paths])
    feats = torch.nn.functional.normalize(clip.model.encode_image(pixels), dim=-1)
    ckpt.head.logit_scale = clip.logit_scale
    pred = ckpt.head.eval()(feats, ckpt.text_features).argmax(-1)
    return float((pred == torch.tensor(images.labels)).float().mean())


def weight_gap(a: Path, b: Path) -> tuple[float, float, float]:
    """Largest |difference|, relative L2 difference of the encoder against the distance it moved."""
    ca, cb = load_head(a), load_head(b)
    start = load_clip("rada-tiny-ViT", "none").model.state_dict()
    worst = max(float((v - cb.encoder_state[k]).abs().max()) for k, v in ca.encoder_state.items())
    head_a, head_b = ca.head.state_dict(), cb.head.state_dict()
    worst = max(worst, max(float((head_a[k] - head_b[k]).abs().max()) for k in head_a))
    diff = sum(float(((v - cb.encoder_state[k]) ** 2).sum()) for k, v in ca.encoder_state.items()) ** 0.5
    moved = sum(float(((v - start[k]) ** 2).sum()) for k, v in ca.encoder_state.items()) ** 0.5
    return worst, diff / max(moved, 1e-30), moved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images-per-class", type=int, default=12)
    parser.add_argument("--ft-epochs", type=int, default=10)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None, help="Keep the data and checkpoints here.")
    args = parser.parse_args()

    root = args.keep or Path(tempfile.mkdtemp())
    root.mkdir(parents=True, exist_ok=True)
    data, test = root / "data", root / "test"
    if not data.exists():
        make_image_folder(data, images_per_class=args.images_per_class, size=64, seed=0)
        make_image_folder(test, images_per_class=8, size=64, seed=1)
    cli = [shutil.which("rada-export"), "train", "--data", str(data), *MODEL, *WARM, "--force"]
    ft = [*FT, "--ft-epochs", str(args.ft_epochs)]
    frozen_s = run([*cli, "--out", str(root / "frozen.safetensors")])
    tuned_s = run([*cli, "--out", str(root / "tuned.safetensors"), *ft])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(args.nproc), "--master-port", "29561",
                "--no-python"]
    ddp_s = run([*torchrun, *cli, "--out", str(root / "tuned_ddp.safetensors"), *ft])

    table = Table(title=f"rada-tiny-ViT (random weights), {args.images_per_class} images per class (3 of them validation), "
                        f"48 test images; CPU, OMP_NUM_THREADS=1")
    for col in ("run", "test top-1", "wall s"):
        table.add_column(col)
    table.add_row("frozen encoders + head", f"{test_accuracy(root / 'frozen.safetensors', test):.1%}", f"{frozen_s:.1f}")
    table.add_row(f"--finetune, {args.ft_epochs} epochs, 1 process", f"{test_accuracy(root / 'tuned.safetensors', test):.1%}",
                  f"{tuned_s:.1f}")
    table.add_row(f"--finetune, torchrun {args.nproc} gloo ranks", f"{test_accuracy(root / 'tuned_ddp.safetensors', test):.1%}",
                  f"{ddp_s:.1f}")
    console = Console()
    console.print(table)
    worst, rel, moved = weight_gap(root / "tuned.safetensors", root / "tuned_ddp.safetensors")
    best = [load_head(root / f).metadata.training["finetune"]["best_epoch"] for f in ("tuned.safetensors", "tuned_ddp.safetensors")]
    console.print(f"1 vs {args.nproc} processes: largest weight difference {worst:.2e}; encoder difference / distance "
                  f"moved (L2) {rel:.2e} (moved {moved:.3f}); best epochs {best[0]} and {best[1]}")
    if args.keep is None:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
