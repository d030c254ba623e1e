"""Encoder passes and wall time of `rada-export train` against the number of epochs.

Shows that epochs beyond the first cost no encoder passes: features are computed once per
augmented copy and every epoch runs over that cache.

    python benchmarks/bench_train.py [--model rada-tiny-ViT] [--epochs 1,5,20] [--aug-copies 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from rada_export.synthetic import make_image_folder
from rada_export.train import TrainConfig
from rada_export.train_job import TrainJob, run_train_job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="rada-tiny-ViT")
    parser.add_argument("--epochs", default="1,5,20")
    parser.add_argument("--aug-copies", type=int, default=2)
    parser.add_argument("--images-per-class", type=int, default=10)
    args = parser.parse_args()

    table = Table(title=f"train on {args.model} (random weights), {args.aug_copies} copies per image")
    for col in ("epochs", "encoder passes", "wall s", "s per extra epoch"):
        table.add_column(col)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        make_image_folder(data, images_per_class=args.images_per_class)
        # One untimed run first: model building and library warm-up are not the point here.
        run_train_job(TrainJob(data=data, out=Path(tmp) / "warmup.safetensors", model=args.model, pretrained="none",
                               aug_copies=1, config=TrainConfig(epochs=1)))
        baseline = None
        for epochs in [int(e) for e in args.epochs.split(",")]:
            job = TrainJob(data=data, out=Path(tmp) / f"h{epochs}.safetensors", model=args.model, pretrained="none",
                           aug_copies=args.aug_copies, config=TrainConfig(epochs=epochs))
            start = time.perf_counter()
            result = run_train_job(job)
            wall = time.perf_counter() - start
            extra = "-" if baseline is None else f"{(wall - baseline[1]) / max(1, epochs - baseline[0]):.3f}"
            baseline = baseline or (epochs, wall)
            table.add_row(str(epochs), str(result.encoder_passes), f"{wall:.2f}", extra)
    Console().print(table)


if __name__ == "__main__":
    main()
