"""`rada-export bench`: latency, throughput and peak memory of a bundle per backend.

Each backend runs in its own child process, so that its peak memory is its own. The fused graph
(pixels or frames in, logits out) is timed on seeded inputs after warm-up runs; PyTorch eager on
the same model is the baseline whenever torch and open_clip are installed.
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import subprocess
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import RadaError
from .progress import SILENT, Reporter
from .runtimes.bundle import layout
from .timing import recording, time_calls

PYTORCH = "pytorch-eager"
OPENVINO = "openvino"
BENCH_BACKENDS = ("onnxruntime-cpu", "onnxruntime-cuda", OPENVINO, "tensorrt", PYTORCH)
# The runtime's backend names (`predict --backend`, load_bundle) mean every bench backend they cover.
BACKEND_ALIASES = {"onnxruntime": ("onnxruntime-cpu", "onnxruntime-cuda")}
# A tail percentile needs enough runs to exist: the p-th percentile of fewer than 100 / (100 - p)
# runs is only the slowest run, so it is reported as null and the table shows the maximum instead.
TAIL_PERCENTILES = (90, 99)
# The load_bundle precision behind each OpenVINO bench precision: "bf16" is the default's bf16 compute.
OPENVINO_REQUESTS = {"fp32": "fp32", "bf16": "auto", "int8": "int8"}


@dataclass(frozen=True)
class BenchTarget:
    backend: str  # onnxruntime-cpu | onnxruntime-cuda | openvino | tensorrt | pytorch-eager
    precision: str  # fp32 | fp16 | int8; on openvino: fp32 | bf16 (the FP32 graph computed in bf16) | int8


@dataclass
class BenchResult:
    backend: str
    precision: str
    batch: int
    p50_ms: float  # latency of one batch, median
    p90_ms: float | None  # None when fewer than 10 runs were timed
    p99_ms: float | None  # None when fewer than 100 runs were timed
    throughput: float  # images per second at p50
    peak_rss_mb: float  # peak resident memory of the process that ran this backend
    repeats: int
    max_ms: float = 0.0  # the slowest timed run


def tail_latency(times_ms: Sequence[float], percentile: float) -> float | None:
    """The percentile of the timed runs, or None when there are too few runs for it to mean more than the maximum."""
    if len(times_ms) < math.ceil(100 / (100 - percentile) - 1e-9):
        return None
    return float(np.percentile(times_ms, percentile))


def available_targets(bundle: Path, backends: Sequence[str] | None = None) -> list[BenchTarget]:
    """What can run here: every ONNX variant on ONNX Runtime (CPU, and CUDA when present), OpenVINO
    (f32, bf16 where the CPU computes it natively, the INT8 graph) when installed, engines, PyTorch."""
    from .runtimes.manifest import FUSED, read_manifest
    from .runtimes.ort_session import available_providers

    manifest = read_manifest(bundle)
    precisions = [p for p in ("fp32", "fp16", "int8") if manifest.graph_key(FUSED, p) in manifest.graphs]
    targets = []
    try:
        providers = available_providers()
    except RadaError:
        providers = []
    if providers:
        targets += [BenchTarget("onnxruntime-cpu", p) for p in precisions]
    if "CUDAExecutionProvider" in providers:
        targets += [BenchTarget("onnxruntime-cuda", p) for p in precisions]
    targets += _openvino_targets(precisions)
    try:
        from .runtimes.engine_selection import find_engine

        targets += [BenchTarget("tensorrt", p) for p in ("fp32", "fp16", "int8") if find_engine(bundle, FUSED, p)]
    except (ImportError, RadaError):
        pass
    if _has_torch():
        targets.append(BenchTarget(PYTORCH, "fp32"))
    if backends:
        unknown = set(backends) - set(BENCH_BACKENDS) - set(BACKEND_ALIASES)
        if unknown:
            raise RadaError(f"unknown backend(s) {sorted(unknown)}",
                            f"use {', '.join(BENCH_BACKENDS)} or {', '.join(BACKEND_ALIASES)} (all its devices here)",
                            field="backends")
        aliases = [b for b in backends if b in BACKEND_ALIASES]
        backends = [b for b in backends if b not in BACKEND_ALIASES]
        available = {t.backend for t in targets}
        for alias in aliases:
            covered = [b for b in BACKEND_ALIASES[alias] if b in available]
            if not covered:
                raise RadaError(f"backend {alias!r} is not available here", "install onnxruntime (the `cpu` or `gpu` extra)",
                                field="backends")
            backends += covered
        missing = set(backends) - available
        if missing:
            raise RadaError(f"backend(s) {sorted(missing)} not available for this bundle here",
                            "install the runtime (onnxruntime-gpu, openvino, tensorrt), build engines with `rada-export trt`, "
                            "or ask for other backends", field="backends")
        targets = [t for t in targets if t.backend in backends]
    return targets


def _openvino_targets(precisions: Sequence[str]) -> list[BenchTarget]:
    """OpenVINO's precisions here: its inference precision is a compile setting, so FP16 graphs are
    not run (OpenVINO computes the FP32 graph in bf16 instead, where the CPU does so natively)."""
    from .runtimes.openvino_backend import cpu_info, openvino_installed

    if not openvino_installed():
        return []
    try:
        native_bf16 = cpu_info().native_bf16
    except RadaError:
        return []
    return [BenchTarget(OPENVINO, p) for p in ("fp32", "bf16", "int8")
            if p in precisions or (p == "bf16" and native_bf16 and "fp32" in precisions)]


def _has_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("open_clip") is not None


def _fused_callable(bundle: Path, target: BenchTarget):
    """(make_input(batch), run(input)): seeded inputs are made outside the timed runs."""
    from .runtimes.backends import BackendChoice, make_runner
    from .runtimes.manifest import FUSED, read_manifest

    manifest = read_manifest(bundle)
    h, w = manifest.preprocess.size
    rng = np.random.default_rng(0)
    if target.backend == PYTORCH:
        import torch

        from .checkpoint import load_head
        from .clip import load_recorded
        from .export.modules import FusedModel

        clip = load_recorded(manifest.model, manifest.pretrained, manifest.pretrained_cfg, manifest.resolved, "the bundle")
        text = torch.from_numpy(np.load(bundle / layout.TEXT_FEATURES))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        fused = FusedModel(clip.model, load_head(bundle / layout.HEAD_FILE).head, text).eval().to(device)

        def make_pixels(batch: int):
            return torch.from_numpy(rng.standard_normal((batch, 3, h, w), dtype=np.float32)).to(device)

        def run_torch(pixels):
            with torch.no_grad():
                out = fused(pixels)
            if device == "cuda":
                torch.cuda.synchronize()
            return out

        return make_pixels, run_torch
    if target.backend == OPENVINO:
        from .runtimes.openvino_backend import plan_openvino

        # bf16 is the FP32 graph computed in bf16: what `auto` asks for on a CPU that has it.
        plan = plan_openvino(OPENVINO_REQUESTS[target.precision], bundle)
        choice = BackendChoice(OPENVINO, plan.describe(), openvino=plan)
        runner = make_runner(choice, bundle, manifest, FUSED, "fp32" if target.precision == "bf16" else target.precision)
    else:
        runner = make_runner(BackendChoice(target.backend, "bench"), bundle, manifest, FUSED, target.precision)
    name = runner.input_names[0]
    frames = manifest.embed_preprocess

    def make_feed(batch: int):
        return {name: rng.integers(0, 256, (batch, h, w, 3), dtype=np.uint8) if frames
                else rng.standard_normal((batch, 3, h, w), dtype=np.float32)}

    return make_feed, runner.run


def bench_in_process(bundle: Path, target: BenchTarget, batches: Sequence[int], repeats: int, warmup: int = 2) -> list[BenchResult]:
    make_input, run = _fused_callable(bundle, target)
    results = []
    for batch in batches:
        data = make_input(batch)
        times = [1000 * t for t in time_calls(lambda: run(data), repeats, warmup)]
        p50 = statistics.median(times)
        p90, p99 = (tail_latency(times, q) for q in TAIL_PERCENTILES)
        results.append(BenchResult(target.backend, target.precision, batch, p50, p90, p99,
                                   1000 * batch / p50, peak_rss_mb(), repeats, max(times)))
    return results


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB.

    Linux's VmHWM belongs to the process's own address space; ru_maxrss would not do here, since
    Linux keeps it across execve, so a child started by a large parent reports the parent's peak.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def bench_isolated(bundle: Path, target: BenchTarget, batches: Sequence[int], repeats: int) -> list[BenchResult]:
    """Runs one target in a child process (its own peak memory), returns its results."""
    cmd = [sys.executable, "-m", "rada_export.bench", str(bundle), target.backend, target.precision,
           ",".join(map(str, batches)), str(repeats)]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if result.returncode != 0:
        raise RadaError(f"benchmarking {target.backend} {target.precision} failed: {result.stderr.strip().splitlines()[-1:]}",
                        "run `rada-export verify --bundle ...` to check the bundle, or leave that backend out")
    rows = [BenchResult(**row) for row in json.loads(result.stdout.strip().splitlines()[-1])]
    if not rows:  # a graph OpenVINO refuses: the other targets still run
        warnings.warn(f"{target.backend} {target.precision} not benchmarked: {result.stderr.strip().splitlines()[-1:]}",
                      stacklevel=2)
    return rows


DEFAULT_BATCHES = (1, 8, 32)


def plan_bench(bundle: str | os.PathLike, backends: Sequence[str] | None = None, batches: Sequence[int] | None = None,
               repeats: int = 20) -> tuple[list[BenchTarget], list[int]]:
    """Checks the request; returns the targets to run and the batch sizes (defaults capped at max batch)."""
    bundle = Path(bundle)
    from .runtimes.manifest import read_manifest, verify_checksums

    # The options first: they cost nothing to check, the bundle's checksums do.
    if repeats < 1:
        raise RadaError(f"repeats must be positive, got {repeats}", "pass e.g. repeats=20", field="repeats")
    if batches is not None and (not list(batches) or any(b < 1 for b in batches)):
        raise RadaError(f"batch sizes must be positive integers, got {list(batches)}", "pass e.g. batches=[1, 8, 32]",
                        field="batches")
    manifest = read_manifest(bundle)
    batches = list(batches) if batches is not None else [b for b in DEFAULT_BATCHES if b <= manifest.max_batch] or [manifest.max_batch]
    verify_checksums(bundle, manifest)
    too_big = [b for b in batches if b > manifest.max_batch]
    if too_big:
        raise RadaError(f"batch size(s) {too_big} exceed the bundle's max batch {manifest.max_batch}",
                        f"use batches up to {manifest.max_batch}, or re-export the bundle with a larger max batch "
                        "(`rada-export onnx --max-batch`)", field="batches")
    return available_targets(bundle, backends), batches


def run_bench(bundle: str | os.PathLike, backends: Sequence[str] | None = None, batches: Sequence[int] | None = None,
              repeats: int = 20, reporter: Reporter = SILENT) -> list[BenchResult]:
    """Every available (or requested) backend and precision at every batch size, each in its own process."""
    targets, batches = plan_bench(bundle, backends, batches, repeats)
    results = []
    with reporter.task("benchmarking backends", len(targets)) as advance:
        for target in targets:
            results += bench_isolated(Path(bundle), target, batches, repeats)
            advance(1)
    return results


def plot(results: Sequence[BenchResult], path: str | os.PathLike, title: str) -> Path:
    """Latency (p50) against batch size, one line per backend and precision; makes the file's folder."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise RadaError("a latency plot needs matplotlib", "pip install 'rada-export[plot]'", field="plot") from err
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for key in sorted({(r.backend, r.precision) for r in results}):
        rows = sorted((r for r in results if (r.backend, r.precision) == key), key=lambda r: r.batch)
        ax.plot([r.batch for r in rows], [r.p50_ms for r in rows], marker="o", label=f"{key[0]} {key[1]}")
    ax.set_xscale("log", base=2)
    batches = sorted({r.batch for r in results})
    ax.set_xticks(batches, labels=[str(b) for b in batches])
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("latency per batch, p50 (ms)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------
# Frames mode: what a camera app pays per frame


FRAME_SIZES = {"720p": (720, 1280), "1080p": (1080, 1920), "4K": (2160, 3840)}
# Bench's names of the runtime's backends -> load_bundle's (backend, device)
RUNTIME_LOADS = {"onnxruntime-cpu": ("onnxruntime", "cpu"), "onnxruntime-cuda": ("onnxruntime", "cuda"), OPENVINO: (OPENVINO, "cpu"),
                 "tensorrt": ("tensorrt", "auto")}


@dataclass
class FrameBenchResult:
    backend: str
    precision: str
    frame: str  # 720p, 1080p, 4K
    p50_ms: float  # one predict(frame, bgr=True), median
    host_ms: float  # of which outside the graph (validation, the copy, preprocessing on the host, softmax)
    graph_ms: float  # of which inside the graph runner (the engine, or ONNX Runtime)
    in_graph_resize: bool  # the bundle's graph takes raw frames (exported with embed_preprocess)
    repeats: int


def camera_frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A seeded BGR camera-like frame: smooth colour plus noise (the content does not change timings)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([(xx // 7 + yy // 5) % 256, (xx // 3) % 256, (yy // 2) % 256], axis=-1)
    return (base + rng.integers(0, 32, (height, width, 3))).clip(0, 255).astype(np.uint8)


def bench_frames_in_process(bundle: Path, target: BenchTarget, frames: Sequence[str], repeats: int, warmup: int = 2) -> list[FrameBenchResult]:
    """predict(frame, bgr=True) at batch 1 per frame size, its time split at the graph runner's call."""

    from .runtimes.runtime import load_bundle

    backend, device = RUNTIME_LOADS[target.backend]
    # OpenVINO's bf16 is its FP16 request (the FP32 graph computed in bf16, runtimes/openvino_backend.py).
    precision = "fp16" if target.precision == "bf16" else target.precision
    rt = load_bundle(bundle, backend=backend, device=device, precision=precision)
    runner = rt.fused_runner()
    graph_seconds: list[float] = []
    runner.run = recording(runner.run, graph_seconds)
    results = []
    for name in frames:
        frame = camera_frame(*FRAME_SIZES[name])
        graph_seconds.clear()
        totals = time_calls(lambda: rt.predict(frame, bgr=True), repeats, warmup)
        inside = graph_seconds[warmup:]
        p50 = statistics.median(totals)
        host = statistics.median(t - g for t, g in zip(totals, inside))
        results.append(FrameBenchResult(target.backend, target.precision, name, 1000 * p50, 1000 * host,
                                        1000 * statistics.median(inside), rt.manifest.frames is not None, repeats))
    return results


def run_bench_frames(bundle: str | os.PathLike, backends: Sequence[str] | None = None, frames: Sequence[str] | None = None,
                     repeats: int = 20, reporter: Reporter = SILENT) -> list[FrameBenchResult]:
    """Frames mode of `bench`: every backend present (engines, ONNX Runtime), each in its own process."""
    bundle = Path(bundle)
    frames = list(frames or FRAME_SIZES)
    unknown = [f for f in frames if f not in FRAME_SIZES]
    if unknown:
        raise RadaError(f"unknown frame size(s) {unknown}", f"use {', '.join(FRAME_SIZES)}")
    targets, _ = plan_bench(bundle, backends, [1], repeats)
    # Frames mode times the device runtime; PyTorch has no runtime path.
    targets = [t for t in targets if t.backend != PYTORCH]
    results = []
    with reporter.task("benchmarking frames", len(targets)) as advance:
        for target in targets:
            cmd = [sys.executable, "-m", "rada_export.bench", "--frames", str(bundle), target.backend, target.precision,
                   ",".join(frames), str(repeats)]
            result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            if result.returncode != 0:
                raise RadaError(f"benchmarking frames on {target.backend} {target.precision} failed: "
                                f"{result.stderr.strip().splitlines()[-1:]}",
                                "run `rada-export verify --bundle ...` to check the bundle, or leave that backend out")
            rows = [FrameBenchResult(**row) for row in json.loads(result.stdout.strip().splitlines()[-1])]
            if not rows:  # a graph OpenVINO refuses: the other targets still run
                warnings.warn(f"{target.backend} {target.precision} not benchmarked: "
                              f"{result.stderr.strip().splitlines()[-1:]}", stacklevel=2)
            results += rows
            advance(1)
    return results


@dataclass
class TtaBenchResult:
    backend: str
    precision: str
    p50_ms: float  # one predict(image, adapt=True) with continual TTA at batch 1, median
    encoder_ms: float  # of which the image_encoder graph (the engine, or ONNX Runtime): TTA does not use the fused graph
    adapt_ms: float  # of which the rest: the head on the features and its AdamW update step (numpy, on the host)
    updates: int  # head updates during the timed runs (every frame updates: continual_batch 1, e_margin 1)
    encoder_on: str  # where the image_encoder ran (runtime.description)
    repeats: int


def bench_tta_in_process(bundle: Path, target: BenchTarget, repeats: int, warmup: int = 2) -> list[TtaBenchResult]:
    """The continual-TTA path at batch 1: the image_encoder graph, the head, one AdamW step per frame."""

    from .runtimes.runtime import load_bundle
    from .runtimes.tta import TTAConfig

    backend, device = RUNTIME_LOADS[target.backend]
    precision = "fp16" if target.precision == "bf16" else target.precision
    # Every frame adapts (one frame per step, any confident frame), so the adapt step is in every timed run.
    tta = TTAConfig(mode="continual", continual_batch=1, e_margin=1.0)
    rt = load_bundle(bundle, backend=backend, device=device, precision=precision, tta=tta)
    h, w = rt.manifest.preprocess.size
    image = camera_frame(h, w)
    encoder_seconds: list[float] = []
    rt.encode = recording(rt.encode, encoder_seconds)  # the instance's encode: what predict(adapt=True) calls for the features
    totals = time_calls(lambda: rt.predict(image, adapt=True), repeats, warmup)
    inside = encoder_seconds[warmup:]
    p50 = statistics.median(totals)
    encoder = statistics.median(inside)
    return [TtaBenchResult(target.backend, target.precision, 1000 * p50, 1000 * encoder,
                           1000 * statistics.median(t - e for t, e in zip(totals, inside)), int(rt.head.updates),
                           rt.description, repeats)]


def run_bench_tta(bundle: str | os.PathLike, backends: Sequence[str] | None = None, repeats: int = 20,
                  reporter: Reporter = SILENT) -> list[TtaBenchResult]:
    """TTA mode of `bench`: continual adaptation per backend present, each in its own process.

    TensorRT is timed where the bundle has an image_encoder engine for this GPU (``rada-export trt``
    builds it by default); without one the TTA path runs its encoder on ONNX Runtime, and it is said.
    """
    from .runtimes.engine_selection import find_engine
    from .runtimes.manifest import IMAGE_ENCODER

    bundle = Path(bundle)
    targets, _ = plan_bench(bundle, backends, [1], repeats)
    targets = [t for t in targets if t.backend != PYTORCH]
    for target in [t for t in targets if t.backend == "tensorrt"]:
        if find_engine(bundle, IMAGE_ENCODER, target.precision) is None:
            targets.remove(target)
            warnings.warn(f"TensorRT {target.precision}: no image_encoder engine for this GPU, so test-time adaptation runs "
                          f"its encoder on ONNX Runtime; build it with `rada-export trt --bundle {bundle} --graph image_encoder "
                          f"--precision {target.precision}`", stacklevel=2)
    results = []
    with reporter.task("benchmarking test-time adaptation", len(targets)) as advance:
        for target in targets:
            cmd = [sys.executable, "-m", "rada_export.bench", "--tta", str(bundle), target.backend, target.precision, str(repeats)]
            result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            if result.returncode != 0:
                raise RadaError(f"benchmarking TTA on {target.backend} {target.precision} failed: "
                                f"{result.stderr.strip().splitlines()[-1:]}",
                                "run `rada-export verify --bundle ...` to check the bundle, or leave that backend out")
            results += [TtaBenchResult(**row) for row in json.loads(result.stdout.strip().splitlines()[-1])]
            advance(1)
    return results


def _worker(argv: list[str]) -> None:
    from .runtimes.openvino_backend import OpenVinoRefusal

    try:
        if argv and argv[0] == "--tta":
            bundle, backend, precision, repeats = argv[1:]
            rows = bench_tta_in_process(Path(bundle), BenchTarget(backend, precision), int(repeats))
        elif argv and argv[0] == "--frames":
            bundle, backend, precision, frames, repeats = argv[1:]
            rows = bench_frames_in_process(Path(bundle), BenchTarget(backend, precision), frames.split(","), int(repeats))
        else:
            bundle, backend, precision, batches, repeats = argv
            rows = bench_in_process(Path(bundle), BenchTarget(backend, precision), [int(b) for b in batches.split(",")],
                                    int(repeats))
    except OpenVinoRefusal as err:  # e.g. an INT8 graph OpenVINO computes wrongly: no row, and the reason
        print(err.problem, file=sys.stderr)
        rows = []
    print(json.dumps([asdict(r) for r in rows]))


if __name__ == "__main__":
    _worker(sys.argv[1:])
