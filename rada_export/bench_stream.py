"""`rada-export bench --source VIDEO`: what decoding in a thread of its own gains on a video.

Four loops over the same frames of a video file, each timed apart, in one process:

- decode: OpenCV reads the frames, nothing else;
- inference: ``predict(frame, bgr=True)`` on frames already decoded (held in memory);
- serial: read a frame, predict it, read the next: what a hand-written camera loop does;
- overlapped: ``Runtime.stream``, whose decode thread reads the next frames while the model runs.

Each pass runs the four loops in turn; the best of ``passes`` passes counts for each loop (on a
shared machine the best pass is the one least disturbed). On a machine with a spare
core, the overlapped loop approaches the slower of decoding and inference; the serial loop pays
their sum.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from .bench import RUNTIME_LOADS
from .errors import RadaError
from .progress import SILENT, Reporter

# As bench's other modes name them; "onnxruntime" (there: every ONNX Runtime device present) is the
# one a stream takes, CUDA where ONNX Runtime has it, else the CPU.
BACKENDS = {**RUNTIME_LOADS, "onnxruntime": ("onnxruntime", "auto")}
HELD_FRAMES = 16  # decoded frames kept for the inference loop, which cycles over them


@dataclass
class StreamBenchResult:
    source: str
    backend: str  # the runtime's description: which backend ran each graph, and the precision
    width: int
    height: int
    frames: int  # frames per pass
    passes: int
    decode_fps: float  # OpenCV decoding alone, one thread
    inference_fps: float  # predict(frame, bgr=True) alone, on decoded frames
    serial_fps: float  # decode then predict, one thread
    overlapped_fps: float  # Runtime.stream: decoding in its own thread, overlapping inference
    gain: float  # overlapped_fps / serial_fps
    decode_share: float  # decoding's share of the serial loop's work per frame


def run_stream_bench(bundle: str | os.PathLike, source: str | os.PathLike, backend: str | None = None,
                     precision: str = "fp32", max_frames: int = 200, passes: int = 3,
                     reporter: Reporter = SILENT) -> StreamBenchResult:
    """Times the four loops on the first ``max_frames`` frames of the video file ``source``."""
    from . import validate
    from .runtimes.runtime import load_bundle
    from .runtimes.video_source import FILE, import_cv2, resolve

    validate.integer("max_frames", max_frames, 1)
    validate.integer("passes", passes, 1)
    spec = resolve(source)
    if spec.kind != FILE:
        raise RadaError(f"the stream benchmark reads the same video file several times; {spec.name} is a {spec.kind}",
                        "record a clip first (e.g. ffmpeg -i URL -t 10 clip.mp4) and pass its path", field="source")
    if backend is not None and backend not in BACKENDS:
        raise RadaError(f"backend {backend!r} cannot run a stream", f"use one of {', '.join(BACKENDS)}", field="backends")
    cv2 = import_cv2()
    name, device = BACKENDS[backend] if backend else ("auto", "auto")
    runtime = load_bundle(bundle, backend=name, device=device, precision=precision)
    path = str(spec.target)

    with reporter.task(f"benchmarking {Path(path).name}", 1 + passes) as advance:
        _, held = _decode(cv2, path, max_frames)
        count = held.count
        if count == 0:
            raise RadaError(f"{spec.name} gave no frame", "check that the file plays", field="source")
        for frame in held.frames[:2]:  # warm-up: sessions made, first-call costs paid
            runtime.predict(frame, bgr=True)
        advance(1)
        times: dict[str, list[float]] = {"decode": [], "inference": [], "serial": [], "overlapped": []}
        for _ in range(passes):  # the four loops in turn, so that a disturbance hits one pass, not one loop
            times["decode"].append(_decode(cv2, path, max_frames)[0])
            times["inference"].append(_infer(runtime, held.frames, count))
            times["serial"].append(_serial(cv2, runtime, path, count))
            times["overlapped"].append(_overlapped(runtime, path, count))
            advance(1)
    decode_fps, infer_fps, serial_fps, overlapped_fps = (count / min(times[loop]) for loop in times)
    height, width = held.frames[0].shape[:2]
    return StreamBenchResult(path, runtime.description, width, height, count, passes, decode_fps, infer_fps, serial_fps,
                             overlapped_fps, overlapped_fps / serial_fps, infer_fps / (decode_fps + infer_fps))


@dataclass
class HeldFrames:
    frames: list  # the first HELD_FRAMES decoded frames
    count: int  # frames decoded


def _decode(cv2, path: str, max_frames: int) -> tuple[float, HeldFrames]:
    capture = cv2.VideoCapture(path)
    held = HeldFrames([], 0)
    start = time.perf_counter()
    try:
        while held.count < max_frames:
            ok, frame = capture.read()
            if not ok:
                break
            held.count += 1
            if len(held.frames) < HELD_FRAMES:
                held.frames.append(frame)
    finally:
        capture.release()
    return time.perf_counter() - start, held


def _infer(runtime, frames: list, count: int) -> float:
    start = time.perf_counter()
    for i in range(count):
        runtime.predict(frames[i % len(frames)], bgr=True)
    return time.perf_counter() - start


def _serial(cv2, runtime, path: str, count: int) -> float:
    start = time.perf_counter()
    capture = cv2.VideoCapture(path)
    try:
        for _ in range(count):
            ok, frame = capture.read()
            if not ok:
                break
            runtime.predict(frame, bgr=True)
    finally:
        capture.release()
    return time.perf_counter() - start


def _overlapped(runtime, path: str, count: int) -> float:
    start = time.perf_counter()
    with runtime.stream(path, max_frames=count) as stream:
        for _ in stream:
            pass
    return time.perf_counter() - start
