"""`rada-export demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rada_export.defaults import DEFAULT_MODEL, DEFAULT_PRETRAINED

from .common import console, handle_errors, make_table, pct, print_json, reporter


@handle_errors
def demo(
    out: Path = typer.Option(Path("rada-demo"), "--out", help="Folder for everything the demo makes (a folder it made is replaced on re-runs; any other non-empty folder is refused)."),
    model: Optional[str] = typer.Option(None, "--model", help=f"open_clip model (default {DEFAULT_MODEL}, every command's default; --quick uses a tiny one)."),
    pretrained: str = typer.Option("none", "--pretrained", help=f"'none' (the default: offline, random weights), an open_clip tag such as {DEFAULT_PRETRAINED} (what train and onnx load by default), or a weights file."),
    quick: bool = typer.Option(False, "--quick", help="A tiny model and fewer images: a smoke run in under a minute."),
    images_per_class: int = typer.Option(16, "--images-per-class", min=4),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
):
    """Run the whole job offline: data, train, export, verify, INT8, TensorRT, runtime and TTA.

    Example: rada-export demo --model ViT-B-32 --pretrained none --out rada-demo
    """
    from dataclasses import asdict

    from rada_export import validate
    from rada_export.demo import DemoConfig, run_demo
    from rada_export.errors import RadaError

    if quick and model is not None:
        raise RadaError(f"--quick runs a tiny built-in model, so --model {model} would be ignored",
                        "drop --quick to run --model, or drop --model for the quick smoke run")
    validate.output_folder(out, "out")
    summary = run_demo(DemoConfig(out=out, model=model or DEFAULT_MODEL, pretrained=pretrained, quick=quick,
                                  images_per_class=images_per_class), reporter(quiet or json_out))
    if json_out:
        print_json(asdict(summary))
        return
    console.print(make_table(f"bundle files ({summary.out / 'bundle'})", ["file", "size"],
                             [[name, f"{size / 2**20:.2f} MiB"] for name, size in summary.files]))
    console.print(make_table("parity against PyTorch FP32 (INT8: against ONNX Runtime FP32 on held-out images)",
                             ["graph", "precision", "output", "mean cos", "min cos", "top-1", ""],
                             [[p["graph"], p["precision"], p["output"], f"{p['mean_cosine']:.6f}", f"{p['min_cosine']:.6f}",
                               pct(p.get("top1_agreement")), "pass" if p["passed"] else "below threshold"] for p in summary.parity]))
    rows = [["PyTorch (training)", "zero-shot head", pct(summary.zero_shot_accuracy), "-"],
            ["PyTorch (training)", "trained head", pct(summary.trained_accuracy), "-"]]
    rows += [[r.name, f"tta {r.tta}", pct(r.accuracy), f"{r.ms_per_image:.1f}"] for r in summary.rows]
    console.print(make_table(f"{summary.model}: validation accuracy and latency (2 CPU threads unless a GPU backend)",
                             ["runtime", "head", "val top-1", "ms / image (batch 8; TTA: 1 image a call)"], rows))
    console.print(f"TensorRT: {summary.tensorrt}")
    for note in summary.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    if summary.random_weights:
        console.print("[bold yellow]These weights are random (--pretrained none): the predictions and accuracies are "
                      "meaningless; only parity and speed mean something. For a real classifier run "
                      "`rada-export demo --pretrained openai` where the model hub is reachable, or pass a weights file "
                      "downloaded elsewhere: --pretrained /path/to/open_clip_model.safetensors.[/bold yellow]")
    console.print(f"done in {summary.seconds:.0f} s; everything is in {summary.out}")
