"""`rada-export train`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import console, handle_errors, make_table, pct, reporter


@handle_errors(fields={"templates": "--template"})
def train(
    data: Path = typer.Option(..., "--data", help="ImageFolder: one sub-folder of images per class."),
    out: Path = typer.Option(Path("head.safetensors"), "--out", help="Checkpoint to write."),
    model: str = typer.Option("ViT-B-16", "--model", help="open_clip model name, hf-hub:org/repo or local-dir:/path."),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", help="open_clip tag, a local weights file, or 'none' (default: openai; hf-hub:/local-dir: carry their own)."),
    pretrained_cfg: Optional[str] = typer.Option(None, "--pretrained-cfg", help="Tag whose settings (QuickGELU, mean/std, resize) apply to a weights file."),
    val: Optional[Path] = typer.Option(None, "--val", help="Validation ImageFolder (default: hold out --val-fraction)."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="Held-out share per class when --val is not given."),
    shots: Optional[int] = typer.Option(None, "--shots", help="Few-shot: train on N images per class."),
    aug_copies: int = typer.Option(4, "--aug-copies", help="Encoded copies per image (copy 0 unaugmented)."),
    template: Optional[List[str]] = typer.Option(None, "--template", help="Prompt template(s) with '{}'; repeat to average."),
    epochs: int = typer.Option(20, "--epochs", min=1),
    lr: float = typer.Option(5e-4, "--lr"),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    alpha: float = typer.Option(0.0, "--alpha", help="Weight of the mask regulariser max|M-1|."),
    temperature: float = typer.Option(1.0, "--temperature"),
    seed: int = typer.Option(0, "--seed"),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing checkpoint."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
):
    """Train a RAda head on frozen CLIP features of an image folder.

    Example: rada-export train --data images/ --model ViT-B-16 --pretrained openai --shots 16 --out head.safetensors

    Sharded feature extraction: torchrun --nproc-per-node 4 --no-python rada-export train --data images/ ...
    """
    from rada_export.train import TrainConfig
    from rada_export.train_job import TrainJob, run_train_job

    job = TrainJob(
        data=data, out=out, model=model, pretrained=pretrained, pretrained_cfg=pretrained_cfg, val=val, val_fraction=val_fraction,
        shots=shots, aug_copies=aug_copies, templates=list(template or []), force=force,
        config=TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, alpha=alpha, temperature=temperature, seed=seed),
    )
    result = run_train_job(job, reporter(quiet))
    if result is None:  # a non-zero torchrun rank: rank 0 reports
        return
    console.print(
        make_table(
            f"{model} / {result.class_names.__len__()} classes / {result.num_val_images} validation images",
            ["head", "val top-1"],
            [["zero-shot CLIP", pct(result.zero_shot_accuracy)], ["RAda (trained)", pct(result.trained_accuracy)]],
        )
    )
    console.print(f"wrote {result.checkpoint} ({result.num_train_images} train images, {result.encoder_passes} encoder passes"
                  + (f", {len(result.skipped)} unreadable skipped" if result.skipped else "") + ")")
