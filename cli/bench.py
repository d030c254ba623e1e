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
    backend: Optional[List[str]] = typer.Option(None, "--backend", help="onnxruntime-cpu, onnxruntime-cuda, openvino, tensorrt, pytorch-eager, or onnxruntime for every ONNX Runtime device present (repeat; default: all present)."),
    batch: Optional[str] = typer.Option(None, "--batch", help="Comma-separated batch sizes (default 1,8,32 up to the bundle's max batch)."),
    repeats: int = typer.Option(20, "--repeats", help="Timed runs per batch size (after 2 warm-up runs); p90 needs 10, p99 100."),
    json_out: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG of latency against batch size per backend."),
    frames: bool = typer.Option(False, "--frames", help="Frames mode: predict() latency on 720p, 1080p and 4K BGR camera frames at batch 1, split into host work and graph time."),
    tta: bool = typer.Option(False, "--tta", help="TTA mode: predict(image, adapt=True) latency with continual test-time adaptation at batch 1 (the image_encoder graph, the head and its update step), per backend."),
    source: Optional[str] = typer.Option(None, "--source", help="Stream mode: decode, inference and end-to-end FPS on this video file, with decoding in a thread of its own (as predict --source does) and without."),
    max_frames: int = typer.Option(200, "--max-frames", help="--source: frames per pass (the first ones of the video)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
):
    """Latency p50/p90/p99, throughput and peak memory of the fused graph per backend, side by side.

    With --tta: the continual test-time-adaptation path (image_encoder graph, head, update step) at batch 1.

    With --source VIDEO: decode, inference and end-to-end FPS on a video, with decoding overlapped in a
    thread of its own (as predict --source does) and without.

    Example: rada-export bench --bundle bundle/ --batch 1,8,32 --plot latency.png
    """
    from rada_export.bench import plot as plot_results
    from rada_export.bench import run_bench
    from rada_export.errors import RadaError

    if source is not None:
        if frames or batch is not None or plot is not None:
            raise RadaError("--source benchmarks a video stream, which takes no --frames, --batch or --plot",
                            "run the stream benchmark and the others separately")
        _bench_stream(bundle, source, backend or None, max_frames, json_out, quiet)
        return
    if tta:
        if frames or batch is not None or plot is not None:
            raise RadaError("--tta times continual adaptation at batch 1, which takes no --frames, --batch or --plot",
                            "run the TTA benchmark and the others separately")
        _bench_tta(bundle, backend or None, repeats, json_out, quiet)
        return
    if frames:
        _bench_frames(bundle, backend or None, repeats, json_out, quiet)
        return
    try:
        batches = None if batch is None else [int(b) for b in batch.split(",") if b.strip()]
    except ValueError:
        raise RadaError(f"--batch {batch!r} is not a list of integers", "pass e.g. --batch 1,8,32") from None
    if plot is not None:  # checked before the (minutes-long) runs, not after them
        from rada_export import validate

        validate.output_file(plot, "plot", validate.PLOT_SUFFIXES, force=True)
    results = run_bench(bundle, backend or None, batches, repeats, reporter(quiet or json_out))
    if plot is not None:
        plot_results(results, plot, f"{bundle.name}: fused graph latency")
    if json_out:
        print_json({"bundle": str(bundle), "results": [asdict(r) for r in results], "plot": str(plot) if plot else None})
        return
    rows = [[r.backend, r.precision, r.batch, f"{r.p50_ms:.2f}", _ms(r.p90_ms), _ms(r.p99_ms), f"{r.max_ms:.2f}",
             f"{r.throughput:.1f}", f"{r.peak_rss_mb:.0f}"] for r in results]
    console.print(make_table(f"{bundle}: fused graph ({repeats} timed runs each)",
                             ["backend", "precision", "batch", "p50 ms", "p90 ms", "p99 ms", "max ms", "images/s", "peak RSS MB"], rows))
    if plot is not None:
        console.print(f"wrote {plot}")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


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


def _bench_tta(bundle: Path, backends, repeats: int, json_out: bool, quiet: bool) -> None:
    from rada_export.bench import run_bench_tta

    results = run_bench_tta(bundle, backends, repeats=repeats, reporter=reporter(quiet or json_out))
    if json_out:
        print_json({"bundle": str(bundle), "tta": [asdict(r) for r in results]})
        return
    rows = [[r.backend, r.precision, f"{r.p50_ms:.2f}", f"{r.encoder_ms:.2f}", f"{r.adapt_ms:.2f}", r.updates] for r in results]
    console.print(make_table(f"{bundle}: predict(image, adapt=True), continual TTA, batch 1",
                             ["backend", "precision", "p50 ms", "image_encoder ms", "head + update ms", "updates"], rows))
    for r in results:
        console.print(f"{r.backend} {r.precision}: {r.encoder_on}", soft_wrap=True)


def _bench_stream(bundle: Path, source: str, backends, max_frames: int, json_out: bool, quiet: bool) -> None:
    from rada_export.bench_stream import run_stream_bench
    from rada_export.errors import RadaError

    if backends and len(backends) > 1:
        raise RadaError("--source benchmarks one backend", "pass at most one --backend with --source")
    r = run_stream_bench(bundle, source, backends[0] if backends else None, max_frames=max_frames,
                         reporter=reporter(quiet or json_out))
    if json_out:
        print_json({"bundle": str(bundle), "stream": asdict(r)})
        return
    rows = [["decode only (OpenCV)", f"{r.decode_fps:.1f}"], ["inference only (predict)", f"{r.inference_fps:.1f}"],
            ["decode then predict (one thread)", f"{r.serial_fps:.1f}"],
            ["overlapped (Runtime.stream)", f"{r.overlapped_fps:.1f}"]]
    console.print(make_table(f"{r.source}: {r.width}x{r.height}, {r.frames} frames, best of {r.passes} passes",
                             ["loop", "frames/s"], rows))
    console.print(f"overlapped / serial: {r.gain:.2f}x (decoding is {100 * r.decode_share:.0f} % of the serial loop's work) "
                  f"on {r.backend}", soft_wrap=True)
