"""`rada-export onnx` and `rada-export verify`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from rada_export.defaults import DEFAULT_MODEL, DEFAULT_PRETRAINED

from .common import console, err_console, expand_folders, handle_errors, make_table, print_json, reporter


def print_report(report, title: str = "parity: ONNX Runtime (CPU) against PyTorch") -> None:
    rows = [
        [r.graph, r.precision, r.output, r.samples, f"{r.max_abs_error:.1e}", f"{r.mean_cosine:.6f}", f"{r.min_cosine:.6f}",
         "-" if r.top1_agreement is None else f"{100 * r.top1_agreement:.1f}%",
         "[green]pass[/green]" if r.passed else "[red]FAIL[/red]"]
        for r in report.results
    ]
    console.print(make_table(title, ["graph", "prec", "output", "n", "max err", "mean cos", "min cos", "top-1", ""], rows))
    for precision in sorted({r.precision for r in report.results}):
        threshold = next(r.thresholds for r in report.results if r.precision == precision)
        console.print(f"  {precision} thresholds: {threshold.describe()}")
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {note}")


def parity_json(report) -> dict:
    """The parity report as JSON, each result's thresholds as numbers (the text stays beside them)."""
    from dataclasses import asdict

    data = report.to_dict()
    for record, result in zip(data["results"], report.results):
        record["thresholds"] = {k: v for k, v in asdict(result.thresholds).items() if v is not None}
        record["thresholds_text"] = result.thresholds.describe()
    return data


@handle_errors(fields={"templates": "--template", "verify_images": "--images", "verify=False": "--no-verify"})
def onnx(
    out: Path = typer.Option(Path("bundle"), "--out", help="Bundle folder to write."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Head checkpoint (rada-export train, or the paper's torch checkpoint). Omit for a fresh, zero-shot head."),
    model: Optional[str] = typer.Option(None, "--model", help=f"open_clip model, hf-hub:org/repo or local-dir:/path (default: the checkpoint's; without --ckpt {DEFAULT_MODEL}, every command's default)."),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", help=f"open_clip tag, local weights file, or 'none' (default: the checkpoint's; without --ckpt {DEFAULT_PRETRAINED})."),
    pretrained_cfg: Optional[str] = typer.Option(None, "--pretrained-cfg", help="Tag whose settings apply to a weights file (default: the checkpoint's)."),
    classes: Optional[List[str]] = typer.Option(None, "--classes", help="Class names: a file (one a line) or comma-separated (default: the checkpoint's)."),
    template: Optional[List[str]] = typer.Option(None, "--template", help="Prompt template(s) with '{}'."),
    fp16: bool = typer.Option(False, "--fp16", help="Also write FP16 variants of the fused and image-encoder graphs."),
    embed_preprocess: bool = typer.Option(False, "--embed-preprocess", help="The fused graph takes raw uint8 camera frames of any size (N x H x W x C) and resizes, crops and normalises them itself."),
    frame_size: Optional[str] = typer.Option(None, "--frame-size", help="With --embed-preprocess: the camera's frame size WxH (e.g. 1920x1080), fixed in the TensorRT profile (default: up to 3840x2160 WxH, so 4K landscape and 1080p portrait; optimised for 1920x1080)."),
    channel_order: str = typer.Option("rgb", "--channel-order", help="With --embed-preprocess: rgb, or bgr for OpenCV/GStreamer BGR(x) frames."),
    max_batch: int = typer.Option(32, "--max-batch", help="Largest batch for engine profiles (recorded in the manifest)."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset (17 or newer)."),
    exporter: str = typer.Option("torchscript", "--exporter", help="torch.onnx exporter: torchscript (fast) or dynamo."),
    images: Optional[List[Path]] = typer.Option(None, "--images", help="Image files or folders to add to the parity check (repeatable)."),
    verify_image: Optional[List[Path]] = typer.Option(None, "--verify-image", hidden=True, help="The former spelling of --images."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip the parity check (not recommended)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing bundle (never a folder that is not one)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars and no tables: one line naming the bundle."),
):
    """Export the encoders, the head and the fused model to a verified ONNX bundle.

    Without --ckpt the head is a fresh, zero-shot one: --classes is then required, and the model is
    the default one unless --model names another.

    Example: rada-export onnx --ckpt head.safetensors --out bundle/ --fp16

    Example: rada-export onnx --classes cat,dog,bird --out bundle/
    """
    from rada_export.errors import VerificationError
    from rada_export.export.bundle import ExportRequest, export_bundle, parse_frame_size
    from rada_export.memory import peak_memory, peak_rss_bytes

    given = [*(images or []), *(verify_image or [])]
    images = expand_folders(given)
    # Every option is checked before the model loads: bad input costs nothing and writes nothing.
    check_export_options(out, classes, template, opset, exporter, max_batch, images, zero_shot=ckpt is None)
    if ckpt is None and model is None:
        model = DEFAULT_MODEL
    req = ExportRequest(
        out=out, ckpt=ckpt, model=model, pretrained=pretrained, pretrained_cfg=pretrained_cfg, classes=classes or None, templates=template or None,
        opset=opset, max_batch=max_batch, fp16=fp16, embed_preprocess=embed_preprocess, exporter=exporter,
        frame_size=parse_frame_size(frame_size) if frame_size is not None else None, channel_order=channel_order.lower(),
        force=force, verify=not no_verify, verify_images=images or (),
    )
    try:
        result = export_bundle(req, reporter(quiet or json_out))
    except VerificationError as err:
        if json_out:
            print_json(parity_json(err.report))
        else:
            print_report(err.report)
        err_console.print("[bold red]verification failed:[/bold red] the bundle was not written")
        raise typer.Exit(1) from None
    if json_out:
        print_json({"bundle": str(result.bundle), "manifest": result.manifest.to_dict(),
                    "verification": parity_json(result.report) if result.report else None, "warnings": result.warnings,
                    "peak_rss_bytes": peak_rss_bytes(), "weights_bytes": result.weights_bytes})
        return
    if quiet:
        verdict = "not verified" if result.report is None else "parity passed" if result.report.passed else "parity failed"
        console.print(f"wrote {result.bundle} ({len(result.manifest.graphs)} graphs, {verdict})", markup=False, highlight=False)
        return
    if result.report:
        print_report(result.report)
    rows = [[k, e.file + (f" + {Path(e.external_data).name}" if e.external_data else ""), e.precision,
             f"{_graph_bytes(result.bundle, e) / 2**20:.1f} MiB"] for k, e in sorted(result.manifest.graphs.items())]
    console.print(make_table(f"graphs written to {result.bundle}", ["graph", "file", "precision", "size"], rows))
    # The ratio to the weights is the figure to watch on big models; on small ones the interpreter dominates.
    weights = result.weights_bytes if (result.weights_bytes or 0) >= 256 * 2**20 else None
    console.print(peak_memory(weights).describe(), markup=False, highlight=False)


def check_export_options(out: Path, classes, templates, opset: int, exporter: str, max_batch: int, images,
                         zero_shot: bool = False) -> None:
    from rada_export import validate
    from rada_export.errors import RadaError
    from rada_export.prompts import parse_class_names, validate_templates

    if zero_shot and not classes:
        raise RadaError("no class names: a zero-shot export (no --ckpt) takes them from --classes",
                        "pass --classes cat,dog or --classes classes.txt (one name a line), or --ckpt with a trained head")

    validate.opset(opset, exporter)
    validate.integer("max_batch", max_batch, 1)
    validate.output_folder(out, "out")
    if templates:
        validate_templates(templates)
    if classes:
        parse_class_names(classes)
    validate.readable_images(images or (), "verify_images")


@handle_errors
def verify(
    bundle: Path = typer.Option(..., "--bundle", help="Bundle folder."),
    images: Optional[List[Path]] = typer.Argument(None, help="Image files or folders (searched recursively) to add to the seeded random inputs."),
    more_images: Optional[List[Path]] = typer.Option(None, "--images", help="Image files or folders, as the positional arguments (repeatable; the spelling every command shares)."),
    backend: str = typer.Option("onnxruntime", "--backend", help="onnxruntime, or openvino: every graph in f32, then the FP32 and INT8 graphs in bf16 too where the CPU computes it natively."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="A bundle exported from a fine-tuned checkpoint (train --finetune): that checkpoint, which holds the PyTorch encoder to compare with."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON (thresholds as numbers)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
):
    """Check every graph of a bundle against PyTorch (exit 1 below the thresholds).

    Example: rada-export verify --bundle bundle/ cat.jpg dog.png

    Example: rada-export verify --bundle bundle/ --images photos/

    Example: rada-export verify --bundle bundle/ --backend openvino
    """
    from rada_export import validate
    from rada_export.export.verify import BACKEND_TITLES, VERIFY_BACKENDS, verify_bundle

    validate.choice("backend", backend, VERIFY_BACKENDS)
    given = [*(images or []), *(more_images or [])]
    files = expand_folders(given)
    validate.readable_images(files, "image")
    report = verify_bundle(bundle, files, reporter=reporter(quiet or json_out), backend=backend, ckpt=ckpt)
    if json_out:
        print_json(parity_json(report))
    else:
        print_report(report, f"parity: {BACKEND_TITLES[backend]} against PyTorch")
    if not report.passed:
        raise typer.Exit(1)


def _graph_bytes(bundle: Path, entry) -> int:
    """A graph's size on disk, its external weights included."""
    return sum((bundle / rel).stat().st_size for rel in entry.paths)

