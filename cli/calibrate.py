"""`rada-export calibrate`: INT8 Q/DQ graphs for a bundle, calibrated on a folder of images."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import console, err_console, handle_errors, make_table, print_json, reporter


def print_calibration(result, quiet: bool = False) -> None:
    data = result.data
    source = "cache" if data.from_cache else f"decoded {data.decoded} file(s)"
    console.print(
        f"calibration: {data.samples} image(s) (asked {data.requested}), {len(data.holdout)} held out, "
        f"{len(data.skipped)} unreadable skipped, seed {data.seed}, {result.recipe.method} ({source})")
    print_report(result.report)
    rows = [[g.key, g.file, g.layers, f"{(result.bundle / g.file).stat().st_size / 2**20:.1f} MiB"] for g in result.graphs]
    console.print(make_table(f"INT8 graphs written to {result.bundle}", ["graph", "file", "int8 layers", "size"], rows))
    for note in result.notes:
        if quiet or note not in data.notes:  # the library logged the data notes already, unless quiet
            console.print(f"[yellow]note:[/yellow] {note}")


def print_report(report) -> None:
    rows = [
        [r.graph, r.samples, f"{r.mean_cosine:.5f}", f"{r.min_cosine:.5f}", f"{100 * r.top1_agreement:.1f} %",
         r.logits_from, "[green]pass[/green]" if r.passed else "[red]FAIL[/red]"]
        for r in report.reports
    ]
    console.print(make_table("INT8 against FP32 (ONNX Runtime, CPU, held-out images)",
                             ["graph", "n", "mean cos", "min cos", "top-1 agree", "logits", ""], rows))
    console.print(f"  thresholds: {report.thresholds}")


@handle_errors(fields={"samples": "--calib-samples"})
def calibrate(
    bundle: Path = typer.Option(..., "--bundle", help="Bundle folder (from `rada-export onnx`)."),
    images: Path = typer.Option(..., "--images", help="Folder of calibration images (searched recursively: jpg, png, webp, bmp)."),
    calib_samples: int = typer.Option(512, "--calib-samples", help="Images to calibrate on (seeded random selection)."),
    method: str = typer.Option("minmax", "--method", help="Calibration method: minmax, entropy or percentile."),
    percentile: float = typer.Option(99.999, "--percentile", help="Range percentile for --method percentile."),
    graph: str = typer.Option("all", "--graph", help="Graph to quantize: model (fused), image_encoder, or all."),
    seed: int = typer.Option(0, "--seed", help="Seed of the image selection."),
    holdout: int = typer.Option(100, "--holdout", help="Held-out images for the accuracy report (at most a fifth of a small folder)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Where decoded images are cached (default: ~/.cache/rada-export/calibration)."),
    accept_degraded: bool = typer.Option(False, "--accept-degraded", help="Write the INT8 graphs even below the accuracy thresholds."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Calibrate INT8 (explicit Q/DQ) graphs on real images and write them into the bundle.

    INT8 goes to the weight-bearing layers inside the image tower's repeated blocks: Linear (MatMul/Gemm) layers, and Conv layers in convolutional towers; stems, patch embeddings, projection heads, depthwise convolutions and attention products stay in float. The report compares INT8 with FP32 on held-out images and refuses to write (exit 1) below mean cosine 0.98 or top-1 agreement 95 %, unless --accept-degraded.

    Example: rada-export calibrate --bundle bundle/ --images val_images/ --calib-samples 512 --method entropy
    """
    from rada_export.calibration.bundle import CalibrateRequest, calibrate_bundle
    from rada_export.errors import VerificationError

    req = CalibrateRequest(
        bundle=bundle, images=images, samples=calib_samples, method=method, graph=graph, seed=seed,
        accept_degraded=accept_degraded, holdout=holdout, cache_dir=cache_dir, percentile=percentile,
    )
    try:
        result = calibrate_bundle(req, reporter(quiet or json_out))
    except VerificationError as err:
        if json_out:
            print_json(err.report.to_dict())
        else:
            print_report(err.report)
        err_console.print("[bold red]INT8 below the thresholds:[/bold red] nothing was written "
                          "(pass --accept-degraded to write it anyway, or try --method entropy / percentile)")
        raise typer.Exit(1) from None
    if json_out:
        print_json(result.to_dict())
        return
    print_calibration(result, quiet)
