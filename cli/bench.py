"""`rada-export bench`."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import List, Optional

import typer

from .common import console, handle_errors, make_table, print_json, reporter


@handle_errors(fields={"backends": "--backend", "batches": "--batch"})
def bench(
    bundle: Path = typer.Option(..., "--bundle", help="Bundle folder."),
    backend: Optional[List[str]] = typer.Option(None, "--backend", help="onnxruntime-cpu, onnxruntime-cuda, tensorrt, pytorch-eager (repeat; default: all present)."),
    batch: Optional[str] = typer.Option(None, "--batch", help="Comma-separated batch sizes (default 1,8,32 up to the bundle's max batch)."),
    repeats: int = typer.Option(20, "--repeats", help="Timed runs per batch size (after 2 warm-up runs)."),
    json_out: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG of latency against batch size per backend."),
    frames: bool = typer.Option(False, "--frames", help="Frames mode: predict() latency on 720p, 1080p and 4K BGR camera frames at batch 1, split into host work and graph time."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Latency p50/p90/p99, throughput and peak memory of the fused graph per backend, side by side.

    Example: rada-export bench --bundle bundle/ --batch 1,8,32 --plot latency.png
    """
    from rada_export.bench import plot as plot_results
    from rada_export.bench import run_bench
    from rada_export.errors import RadaError

    if frames:
        _bench_frames(bundle, backend or None, repeats, json_out, quiet)
        return
    try:
        batches = None if batch is None else [int(b) for b in batch.split(",") if b.strip()]
    except ValueError:
        raise RadaError(f"--batch {batch!r} is not a list of integers", "pass e.g. --batch 1,8,32") from None
    if plot is not None:  # checked before the (minutes-long) runs, not after them
        from rada_export import validate

        validate.output_file(plot, "plot", validate.PLOT_SUFFIXES)
    results = run_bench(bundle, backend or None, batches, repeats, reporter(quiet or json_out))
    if plot is not None:
        plot_results(results, plot, f"{bundle.name}: fused graph latency")
    if json_out:
        print_json({"bundle": str(bundle), "results": [asdict(r) for r in results], "plot": str(plot) if plot else None})
        return
    rows = [[r.backend, r.precision, r.batch, f"{r.p50_ms:.2f}", f"{r.p90_ms:.2f}", f"{r.p99_ms:.2f}", f"{r.throughput:.1f}",
             f"{r.peak_rss_mb:.0f}"] for r in results]
    console.print(make_table(f"{bundle}: fused graph", ["backend", "precision", "batch", "p50 ms", "p90 ms", "p99 ms",
                                                        "images/s", "peak RSS MB"], rows))
    if plot is not None:
        console.print(f"wrote {plot}")


def _bench_frames(bundle: Path, backends, repeats: int, json_out: bool, quiet: bool) -> None:
    from rada_export.bench import run_bench_frames

    results = run_bench_frames(bundle, backends, repeats=repeats, reporter=reporter(quiet or json_out))
    if json_out:
        print_json({"bundle": str(bundle), "frames": [asdict(r) for r in results]})
        return
    rows = [[r.backend, r.precision, r.frame, f"{r.p50_ms:.2f}", f"{r.host_ms:.2f}", f"{r.graph_ms:.2f}",
             "graph" if r.in_graph_resize else "host"] for r in results]
    console.print(make_table(f"{bundle}: predict(frame, bgr=True), batch 1",
                             ["backend", "precision", "frame", "p50 ms", "host ms", "graph ms", "resize on"], rows))
