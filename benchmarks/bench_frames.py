"""Camera frames through `predict`: ViT-B-32, FP32, batch 1, on this CPU.

Prints, in one run:
- `predict(frame, bgr=True)` on a 224 x 224 frame and on a 1920 x 1080 frame, with a bundle
  whose graph resizes (`--embed-preprocess --channel-order bgr`): the ratio (target: at most 1.2x);
- the host work per 1080p frame in that path: predict's time outside the graph (target: < 2 ms);
- the same 1080p frame with the graph fed preprocessed pixels (host resize): open_clip's exact
  Pillow resize, and the fast host path (Pillow reducing_gap), with their ratios to the 224 frame;
- on each CPU backend (ONNX Runtime CPU, and OpenVINO where installed), the 1080p / 224 ratio with
  the whole resize in the graph (before) and with the graph's box reduction on the host (after,
  the default on CPU backends; target: at most 1.1x), the calls taken in turn so that a change in
  the machine's load hits all alike; medians, with the CPU model and the load average.

    python benchmarks/bench_frames.py [--repeats 20] [--bundle FRAMES_BUNDLE]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from rada_export.bench import camera_frame
from rada_export.timing import recording, time_calls


def export(out: Path, embed: bool) -> Path:
    from rada_export.export.bundle import ExportRequest, export_bundle

    req = ExportRequest(out=out, model="ViT-B-32", pretrained="none", classes=["cat", "dog", "car", "person", "bicycle"],
                        embed_preprocess=embed, channel_order="bgr" if embed else "rgb", verify=False)
    return export_bundle(req).bundle


def split_predict(rt, frame, repeats: int, **kwargs) -> tuple[float, float, float]:
    """(total ms, host ms, graph ms), medians; the graph's share timed at the runner's call."""
    runner = rt.fused_runner()
    real_run = runner.run
    inside: list[float] = []
    runner.run = recording(real_run, inside)
    try:
        totals = time_calls(lambda: rt.predict(frame, bgr=True, **kwargs), repeats, warmup=3)
    finally:
        runner.run = real_run
    inside = inside[3:]
    return (1000 * statistics.median(totals), 1000 * statistics.median(t - g for t, g in zip(totals, inside)),
            1000 * statistics.median(inside))


def cpu_model() -> str:
    """The CPU's model name as lscpu and /proc/cpuinfo give it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} CPUs"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def cpu_backends() -> list[str]:
    from rada_export.runtimes.openvino_backend import openvino_installed

    return ["onnxruntime"] + (["openvino"] if openvino_installed() else [])


def interleaved(calls: dict[str, object], repeats: int) -> dict[str, tuple[float, float]]:
    """(median, best) ms of each call, the calls taken in turn (one of each, ``repeats`` times): on a
    shared machine a change in load falls on every call alike, and the best is the least disturbed.
    Give it the calls of one runtime only: ONNX Runtime's worker threads spin for a while after a run,
    so a call that follows another session's pays for that session's spinning threads."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for fn in calls.values():
        time_calls(fn, 1, warmup=3)
    for _ in range(repeats):
        for name, fn in calls.items():
            samples[name] += time_calls(fn, 1, warmup=0)
    return {name: (1000 * statistics.median(times), 1000 * min(times)) for name, times in samples.items()}


def host_reduction_ratios(bundle: Path, backend: str, small, hd, repeats: int) -> dict[str, tuple[float, float]]:
    """1080p / 224 on one CPU backend, the resize all in the graph vs the box reduction on the host;
    each runtime's two frame sizes in turn, one runtime after the other."""
    from rada_export.runtimes.runtime import load_bundle

    graph = load_bundle(bundle, backend=backend, device="cpu", host_frame_reduction=False)
    ms = interleaved({
        "224, graph resizes": lambda: graph.predict(small, bgr=True),
        "1080p, graph resizes": lambda: graph.predict(hd, bgr=True),
    }, repeats)
    del graph
    host = load_bundle(bundle, backend=backend, device="cpu")
    assert host.host_frame_reduction, host.description  # the default on a CPU backend
    ms.update(interleaved({
        "224, host box": lambda: host.predict(small, bgr=True),
        "1080p, host box + graph filter": lambda: host.predict(hd, bgr=True),
    }, repeats))
    return ms


def cpu_ratios(bundle: Path, small, hd, repeats: int, console: Console) -> None:
    """The 1080p / 224 table on each CPU backend: before (graph resizes) and after (host box step)."""
    table = Table(title=f"1080p / 224 on CPU backends: predict(frame, bgr=True), ViT-B-32 FP32, batch 1, {repeats} calls "
                        "each in turn; median (best) ms")
    for col in ("backend", "224, graph resizes", "1080p, graph resizes", "224, host box", "1080p, host box", "ratio before", "ratio after"):
        table.add_column(col)
    for backend in cpu_backends():
        ms = host_reduction_ratios(bundle, backend, small, hd, repeats)
        cells = [f"{ms[k][0]:.1f} ({ms[k][1]:.1f})" for k in ("224, graph resizes", "1080p, graph resizes", "224, host box",
                                                            "1080p, host box + graph filter")]
        before = [ms["1080p, graph resizes"][i] / ms["224, graph resizes"][i] for i in (0, 1)]
        after = [ms["1080p, host box + graph filter"][i] / ms["224, host box"][i] for i in (0, 1)]
        table.add_row(backend, *cells, f"{before[0]:.3f}x ({before[1]:.3f}x)",
                      f"{after[0]:.3f}x ({after[1]:.3f}x) {'PASS' if after[0] <= 1.1 else 'FAIL'} <= 1.1x")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--bundle", type=Path, default=None,
                        help="an existing ViT-B-32 bundle exported with --embed-preprocess --channel-order bgr: "
                             "only the CPU backend comparison runs, on it")
    args = parser.parse_args()
    from rada_export.runtimes import preprocess as pp
    from rada_export.runtimes.runtime import load_bundle

    console = Console()
    console.print(f"CPU: {cpu_model()}; load average at start: {load_average()}")
    if args.bundle is not None:
        cpu_ratios(args.bundle, camera_frame(224, 224, 1), camera_frame(1080, 1920, 2), args.repeats, console)
        console.print(f"CPU: {cpu_model()}; load average at the end: {load_average()}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        console.print("exporting ViT-B-32 (random weights) with and without --embed-preprocess ...")
        frames_bundle = export(Path(tmp) / "frames", embed=True)
        pixels_bundle = export(Path(tmp) / "pixels", embed=False)
        rt_frames = load_bundle(frames_bundle, backend="onnxruntime", device="cpu", host_frame_reduction=False)
        rt_pixels = load_bundle(pixels_bundle, backend="onnxruntime", device="cpu")
        small, hd = camera_frame(224, 224, 1), camera_frame(1080, 1920, 2)

        rows = []
        base = split_predict(rt_frames, small, args.repeats)
        graph_hd = split_predict(rt_frames, hd, args.repeats)
        rows.append(("graph resizes", "224 x 224", *base))
        rows.append(("graph resizes", "1920 x 1080", *graph_hd))

        # Host resize into the pixels graph: exact (open_clip's Pillow resize) and fast (reducing_gap).
        cfg = rt_pixels.manifest.preprocess
        base_px = split_predict(rt_pixels, small, args.repeats)
        exact_ms = 1000 * statistics.median(time_calls(lambda: pp.preprocess(hd, cfg, bgr=True), args.repeats, 2))
        fast_ms = 1000 * statistics.median(time_calls(lambda: pp.preprocess(hd, cfg, bgr=True, fast=True), args.repeats, 2))
        fast_hd = split_predict(rt_pixels, hd, args.repeats)  # the runtime's host path is the fast one
        rows.append(("host resizes", "224 x 224", *base_px))
        rows.append(("host resizes (fast)", "1920 x 1080", *fast_hd))

        table = Table(title="predict(frame, bgr=True), ViT-B-32 FP32, batch 1, ONNX Runtime CPU")
        for col in ("path", "frame", "total ms", "host ms", "graph ms"):
            table.add_column(col)
        for path, frame, total, host, graph in rows:
            table.add_row(path, frame, f"{total:.2f}", f"{host:.2f}", f"{graph:.2f}")
        console.print(table)

        ratio = graph_hd[0] / base[0]
        console.print(f"1080p / 224 frame through predict, graph resizes: {ratio:.3f}x (target <= 1.2x) "
                      f"[{'PASS' if ratio <= 1.2 else 'FAIL'}]")
        console.print(f"host work per 1080p frame, graph resizes: {graph_hd[1]:.3f} ms (target < 2 ms) "
                      f"[{'PASS' if graph_hd[1] < 2 else 'FAIL'}]")
        console.print(f"1080p / 224 frame, host resizes (fast path): {fast_hd[0] / base_px[0]:.3f}x; "
                      f"host preprocessing of one 1080p BGR frame: exact {exact_ms:.1f} ms, fast {fast_ms:.1f} ms "
                      f"({exact_ms / fast_ms:.1f}x faster)")

        cpu_ratios(frames_bundle, small, hd, args.repeats * 2, console)
        console.print(f"CPU: {cpu_model()}; load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
