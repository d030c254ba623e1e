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
    if result.sample is not None:
        console.print(f"held-out sample: {result.sample.held_out} image(s), {result.sample.classes} FP32 class(es) "
                      f"(minimum {result.sample.to_dict()['min_held_out']} and {result.sample.min_classes})")
    print_report(result.report)
    rows = [[g.key, g.file, g.layers, f"{(result.bundle / g.file).stat().st_size / 2**20:.1f} MiB"] for g in result.graphs]
    console.print(make_table(f"INT8 graphs written to {result.bundle}", ["graph", "file", "int8 layers", "size"], rows))
    for note in result.notes:
        if quiet or note not in data.notes:  # the library logged the data notes already, unless quiet
            console.print(f"[yellow]note:[/yellow] {note}")


def print_report(report) -> None:
    # n stands beside the verdict: a pass on 7 held-out images says far less than one on 100.
    rows = [
        [r.graph, f"{r.mean_cosine:.5f}", f"{r.min_cosine:.5f}", f"{100 * r.top1_agreement:.1f} %",
         r.logits_from, ("[green]pass[/green]" if r.passed else "[red]FAIL[/red]") + f" (n={r.samples})"]
        for r in report.reports
    ]
    console.print(make_table("INT8 against FP32 (ONNX Runtime, CPU, held-out images)",
                             ["graph", "mean cos", "min cos", "top-1 agree", "logits", "verdict (held-out n)"], rows))
    console.print(f"  thresholds: {report.thresholds}")


@handle_errors(fields={"samples": "--calib-samples"})
def calibrate(
    bundle: Path = typer.Option(..., "--bundle", help="Bundle folder (from `rada-export onnx`)."),
    images: Path = typer.Option(..., "--images", help="Folder of calibration images like those the model will see, of several classes (searched recursively: jpg, png, webp, bmp); at least 100 for a trustworthy report."),
    calib_samples: int = typer.Option(512, "--calib-samples", help="Images to calibrate on (seeded random selection)."),
    method: str = typer.Option("minmax", "--method", help="Calibration method: minmax, entropy or percentile."),
    percentile: float = typer.Option(99.999, "--percentile", help="Range percentile for --method percentile."),
    graph: str = typer.Option("all", "--graph", help="Graph to quantize: model (fused), image_encoder, or all."),
    seed: int = typer.Option(0, "--seed", help="Seed of the image selection."),
    holdout: int = typer.Option(100, "--holdout", help="Held-out images for the accuracy report (at most a fifth of a small folder)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Where decoded images are cached (default: ~/.cache/rada-export/calibration)."),
    accept_degraded: bool = typer.Option(False, "--accept-degraded", help="Write the INT8 graphs even below the accuracy thresholds, or on a held-out sample too small to judge them."),
    force: bool = typer.Option(False, "--force", help="Replace the INT8 graphs the bundle already has."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
):
    """Calibrate INT8 (explicit Q/DQ) graphs on real images and write them into the bundle.

    INT8 goes to the weight-bearing layers inside the image tower's repeated blocks: Linear (MatMul/Gemm) layers, and Conv layers in convolutional towers; stems, patch embeddings, projection heads, depthwise convolutions and attention products stay in float. The report compares INT8 with FP32 on held-out images and refuses to write (exit 1) below mean cosine 0.98 or top-1 agreement 95 %, unless --accept-degraded.

    It also refuses (exit 2, before quantizing) a held-out sample too small to judge INT8, unless --accept-degraded: fewer than 20 held-out images (each weighs 100/n % against the 95 % top-1 gate, so below 20 one disagreement fails and none passes: the figure cannot tell 95 % agreement from 80 %), or held-out images on which the FP32 graph predicts fewer than 2 classes (on one class, top-1 agreement cannot show INT8 swapping classes). A small folder holds out a fifth of its images, so give at least 100. INT8 graphs already in the bundle are replaced only with --force.

    Example: rada-export calibrate --bundle bundle/ --images val_images/ --calib-samples 512 --method entropy
    """
    from rada_export.calibration.bundle import CalibrateRequest, calibrate_bundle
    from rada_export.errors import VerificationError

    req = CalibrateRequest(
        bundle=bundle, images=images, samples=calib_samples, method=method, graph=graph, seed=seed,
        accept_degraded=accept_degraded, holdout=holdout, cache_dir=cache_dir, percentile=percentile, force=force,
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
