"""`rada-export train`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from rada_export.defaults import DEFAULT_MODEL, DEFAULT_PRETRAINED

from .common import console, handle_errors, make_table, pct, print_json, reporter


@handle_errors(fields={"templates": "--template", "head_lr": "--ft-head-lr"})
def train(
    data: Path = typer.Option(..., "--data", help="ImageFolder: one sub-folder of images per class."),
    out: Path = typer.Option(Path("head.safetensors"), "--out", help="Checkpoint to write."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="open_clip model name, hf-hub:org/repo or local-dir:/path (the default is every command's default model)."),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", help=f"open_clip tag, a local weights file, or 'none' (default: {DEFAULT_PRETRAINED}; hf-hub:/local-dir: carry their own)."),
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
    force: bool = typer.Option(False, "--force", help="Overwrite an existing checkpoint (and a fine-tuning run's resumable state)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON (progress bars go to stderr unless --quiet)."),
    finetune: bool = typer.Option(False, "--finetune", help="Fine-tune the image encoder with the head (after a head-only warm phase of --epochs)."),
    ft_epochs: int = typer.Option(10, "--ft-epochs", min=1, help="--finetune: epochs of encoder + head training."),
    encoder_lr: float = typer.Option(1e-5, "--encoder-lr", help="--finetune: peak learning rate of the encoder."),
    ft_head_lr: float = typer.Option(1e-4, "--ft-head-lr", help="--finetune: peak learning rate of the head."),
    ft_weight_decay: float = typer.Option(0.1, "--ft-weight-decay", help="--finetune: AdamW weight decay of the encoder's matrices."),
    warmup_fraction: float = typer.Option(0.1, "--warmup-fraction", help="--finetune: share of the steps spent warming the learning rate up (then cosine decay)."),
    layer_decay: float = typer.Option(1.0, "--layer-decay", help="--finetune: learning-rate factor per encoder layer below the top (1.0: none)."),
    ft_batch_size: int = typer.Option(32, "--ft-batch-size", min=1, help="--finetune: global batch (split across torchrun ranks)."),
    wise: Optional[float] = typer.Option(None, "--wise", help="--finetune: WiSE-FT, mix ALPHA of the fine-tuned encoder with 1-ALPHA of the pretrained one."),
    amp: str = typer.Option("none", "--amp", help="--finetune: 'bf16' autocast for the encoders (GPUs), or 'none'."),
    grad_checkpointing: bool = typer.Option(False, "--grad-checkpointing", help="--finetune: activation checkpointing in the encoder (less memory, more compute)."),
    unfreeze_text: bool = typer.Option(False, "--unfreeze-text", help="--finetune: train the text encoder too (class features recomputed every step)."),
    device: str = typer.Option("auto", "--device", help="--finetune: auto (each rank's GPU when there is one), cpu or cuda."),
    num_workers: int = typer.Option(0, "--num-workers", help="--finetune: image-decoding worker processes per rank."),
    resume: bool = typer.Option(False, "--resume", help="--finetune: continue an interrupted run from its last epoch."),
    stop_after_epochs: Optional[int] = typer.Option(None, "--stop-after-epochs", help="--finetune: stop after N epochs of this call, resumable (for time-limited jobs)."),
):
    """Train a RAda head on frozen CLIP features of an image folder, or fine-tune the image encoder with it.

    Example: rada-export train --data images/ --model ViT-B-16 --pretrained openai --shots 16 --out head.safetensors

    Fine-tuning: rada-export train --data images/ --finetune --ft-epochs 10 --wise 0.5 --out ft.safetensors

    On several processes or GPUs: torchrun --nproc-per-node 4 --no-python rada-export train --data images/ ...
    """
    from rada_export.finetune.config import FinetuneConfig
    from rada_export.finetune.job import FinetuneRun
    from rada_export.train import TrainConfig
    from rada_export.train_job import TrainJob, run_train_job

    ft = None
    if finetune:
        ft = FinetuneConfig(epochs=ft_epochs, encoder_lr=encoder_lr, head_lr=ft_head_lr, weight_decay=ft_weight_decay,
                            warmup_fraction=warmup_fraction, layer_decay=layer_decay, batch_size=ft_batch_size,
                            wise_alpha=wise, amp=amp, grad_checkpointing=grad_checkpointing, unfreeze_text=unfreeze_text,
                            device=device, num_workers=num_workers)
    job = TrainJob(
        data=data, out=out, model=model, pretrained=pretrained, pretrained_cfg=pretrained_cfg, val=val, val_fraction=val_fraction,
        shots=shots, aug_copies=aug_copies, templates=list(template or []), force=force,
        config=TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, alpha=alpha, temperature=temperature, seed=seed),
        finetune=ft, run=FinetuneRun(resume=resume, stop_after_epochs=stop_after_epochs),
    )
    result = run_train_job(job, reporter(quiet))
    if result is None:  # a non-zero torchrun rank: rank 0 reports
        return
    if json_out:
        print_json(train_summary(result, model, wise))
        return
    if not result.finished:
        console.print(f"stopped as asked; resumable state in {result.checkpoint} (continue with --resume)")
        return
    rows = [["zero-shot CLIP", pct(result.zero_shot_accuracy)], ["RAda (trained)", pct(result.trained_accuracy)]]
    outcome = result.finetune
    if outcome is not None:
        rows[1][0] = "RAda, frozen encoders (warm phase)"
        rows.append([f"RAda-FT (best epoch {outcome.best_epoch})", pct(outcome.best_accuracy)])
        if outcome.wise_accuracy is not None:
            rows.append([f"RAda-FT + WiSE-FT (alpha {wise:g})", pct(outcome.wise_accuracy)])
    console.print(
        make_table(
            f"{model} / {result.class_names.__len__()} classes / {result.num_val_images} validation images",
            ["head", "val top-1"], rows,
        )
    )
    console.print(f"wrote {result.checkpoint} ({result.num_train_images} train images, {result.encoder_passes} encoder passes"
                  + (f", {len(result.skipped)} unreadable skipped" if result.skipped else "") + ")")


def train_summary(result, model: str, wise: Optional[float]) -> dict:
    """What the table and the last line say, for a caller that parses stdout."""
    outcome = result.finetune
    return {
        "checkpoint": str(result.checkpoint), "finished": result.finished, "model": model,
        "classes": list(result.class_names), "train_images": result.num_train_images,
        "validation_images": result.num_val_images, "encoder_passes": result.encoder_passes,
        "zero_shot_accuracy": result.zero_shot_accuracy, "trained_accuracy": result.trained_accuracy,
        "finetune": None if outcome is None else {
            "best_epoch": outcome.best_epoch, "best_accuracy": outcome.best_accuracy,
            "wise_alpha": wise, "wise_accuracy": outcome.wise_accuracy},
        "skipped": [str(path) for path in result.skipped],
    }
