"""`rada-export predict`: image files, or the frames of a video, camera, stream URL or pipeline."""

from __future__ import annotations

import collections
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

import typer

from .common import console, err_console, handle_errors, image_files, make_table, print_json_line, reporter

FIELDS = {"timeout_s": "--timeout"}
VIDEO_CODECS = {".avi": "MJPG", ".mp4": "mp4v"}
STREAM_ONLY = ("--stride", "--max-frames", "--timeout", "--save", "--save-state", "--force")


@handle_errors(fields=FIELDS, json_lines=True)
def predict(
    images: Optional[List[Path]] = typer.Argument(None, help="Image files (or folders of images, searched recursively) to classify."),
    bundle: Path = typer.Option(..., "--bundle", help="Bundle folder."),
    more_images: Optional[List[Path]] = typer.Option(None, "--images", help="Image files or folders, as the positional arguments (repeatable; the spelling calibrate, trt, onnx and verify share)."),
    backend: str = typer.Option("auto", "--backend", help="auto, onnxruntime, openvino or tensorrt."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    precision: str = typer.Option("auto", "--precision", help="auto (the FP32 graphs; bf16 on OpenVINO where the CPU has it), fp32, fp16 or int8 (where the bundle has it)."),
    tta: str = typer.Option("off", "--tta", help="Test-time adaptation: off, episodic or continual (the output then shows frames, updates, skips and resets)."),
    views: Optional[int] = typer.Option(None, "--views", help="Episodic TTA: augmented views per image (default 16)."),
    top: int = typer.Option(3, "--top", min=1, help="Classes shown per image."),
    classes: List[str] = typer.Option(None, "--classes", help="Replace the bundle's classes (comma-separated or a file)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON lines as results come: one object per image (or frame), one per unreadable file, then a summary line."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar (it goes to stderr)."),
    source: Optional[str] = typer.Option(None, "--source", help="Classify a stream instead of images: a video file, a camera index (0), an RTSP/HTTP URL or a GStreamer pipeline ending in appsink."),
    stride: int = typer.Option(1, "--stride", help="--source: classify every Nth frame."),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", help="--source: stop after this many classified frames."),
    timeout: float = typer.Option(10.0, "--timeout", help="--source: seconds to wait for a frame before giving up."),
    save: Optional[Path] = typer.Option(None, "--save", help="--source: write the frames with their labels drawn to this video (.avi or .mp4)."),
    save_state: Optional[Path] = typer.Option(None, "--save-state", help="--source with --tta continual: write the adapted head's state (.npz) at the end."),
    force: bool = typer.Option(False, "--force", help="--source: overwrite an existing --save or --save-state file."),
):
    """Classify images, or a video or camera stream, with a bundle, optionally adapting the head at test time.

    Images are classified in batches of 32 with a progress bar on stderr; a file that cannot be read
    is skipped and named at the end, and the exit code is 0 when at least one image was classified
    (2 when none could be read). --json prints one line per image as it is classified:
    {"image", "label", "class", "top": [{"class", "probability"}]}; an unreadable file gives
    {"image", "error", "fix"}; the last line is {"summary": {"backend", "precision", "tta",
    "predicted", "unreadable": [...], "tta_stats"}}.

    With --source, frames are decoded in a thread that overlaps inference: a file loses no frame, a
    live source keeps the newest. --json prints one line per frame as it is classified. Ctrl-C
    stops a stream, writes --save and --save-state, and prints a summary.

    Example: rada-export predict --bundle bundle/ photos/*.jpg --tta episodic --top 3

    Example: rada-export predict --bundle bundle/ --source clip.mp4 --tta continual --json
    """
    from rada_export.errors import RadaError
    from rada_export.runtimes import TTAConfig

    from rada_export import validate

    images = [*(images or []), *(more_images or [])]
    validate.choice("tta", tta, ("off", "episodic", "continual"))
    if views is not None and tta != "episodic":
        raise RadaError(f"--views {views} applies only to --tta episodic (this run has --tta {tta})",
                        "add --tta episodic, or drop --views")
    if source is not None and images:
        raise RadaError("image paths and --source were both given", "classify either image files or one stream per run")
    if source is None:
        given = [flag for flag, value in zip(STREAM_ONLY, (stride != 1, max_frames, timeout != 10.0, save, save_state, force)) if value]
        if given:
            raise RadaError(f"{', '.join(given)} applies only to a stream", "add --source VIDEO (or a camera index), or drop it")
        if not images:
            raise RadaError("nothing to classify", "pass image files or folders, or --source with a video file, camera or URL")
    names = None
    if classes:
        from rada_export.prompts import parse_class_names

        names = parse_class_names(classes)  # before the bundle loads: a missing class file costs nothing
    config = None if tta == "off" else TTAConfig(mode=tta, views=16 if views is None else views) if tta == "episodic" else TTAConfig(mode=tta)
    if source is not None:
        request = StreamRequest(source, stride, max_frames, timeout, save, save_state, top, json_out, tta, force)
        _predict_stream(request, lambda: _runtime(bundle, backend, device, precision, config, names))
        return
    files = image_files(images)
    runtime = _runtime(bundle, backend, device, precision, config, names)
    run = ImageRun(top=top, tta=tta, json_out=json_out, quiet=quiet)
    report_images(runtime, classify_files(runtime, files, run), run)


# -- image files -----------------------------------------------------------------------------------

IMAGE_BATCH = 32  # the runtime's own batch: a result line per image comes at most a batch late


@dataclass(frozen=True)
class ImageRun:
    top: int
    tta: str
    json_out: bool
    quiet: bool


@dataclass
class ImageOutcome:
    rows: list[list[str]]
    predicted: int
    unreadable: list[tuple[str, str]]  # (file, why)


def classify_files(runtime, files: list[Path], run: ImageRun) -> ImageOutcome:
    """Decodes and classifies ``files`` batch by batch; a file that cannot be decoded is skipped and
    recorded, not fatal, so one broken file in a folder of thousands costs that file alone."""
    from rada_export.errors import RadaError
    from rada_export.runtimes.preprocess import load_image

    outcome = ImageOutcome(rows=[], predicted=0, unreadable=[])
    with reporter(run.quiet).task(f"classifying {len(files)} image(s)", len(files)) as advance:
        for start in range(0, len(files), IMAGE_BATCH):
            chunk, decoded, kept = files[start:start + IMAGE_BATCH], [], []
            for path in chunk:
                try:
                    decoded.append(load_image(path))
                    kept.append(path)
                except RadaError as err:
                    outcome.unreadable.append((str(path), err.problem))
                    if run.json_out:
                        print_json_line({"image": str(path), "error": err.problem, "fix": err.fix})
            if decoded:
                prediction = runtime.predict(decoded, adapt=run.tta != "off")
                ranked = prediction.top(run.top)
                for i, path in enumerate(kept):
                    if run.json_out:
                        print_json_line({"image": str(path), "label": int(prediction.labels[i]), "class": prediction.class_names[i],
                                         "top": [{"class": c, "probability": p} for c, p in ranked[i]]})
                    else:
                        outcome.rows.append([str(path), prediction.class_names[i],
                                             ", ".join(f"{c} {100 * p:.1f}%" for c, p in ranked[i])])
                outcome.predicted += len(kept)
            advance(len(chunk))
    return outcome


def tta_stats(runtime) -> dict[str, Any] | None:
    """The runtime's adaptation counters (frames, updates, skips, resets), where it reports them."""
    stats = getattr(runtime, "stats", None)
    return stats.to_dict() if stats is not None else None


def describe_tta(stats: dict[str, Any]) -> str:
    text = (f"TTA {stats.get('mode')}: {stats.get('frames')} frame(s), {stats.get('updates')} head update(s), "
            f"{stats.get('skipped_unconfident')} skipped as unconfident, {stats.get('skipped_nonfinite')} skipped as "
            f"non-finite, {stats.get('resets')} reset(s)")
    if stats.get("mode") == "continual" and stats.get("frames") and not stats.get("updates"):
        text += ": the head did not adapt (every frame was too unsure to learn from, or was dropped)"
    return text


def report_images(runtime, outcome: ImageOutcome, run: ImageRun) -> None:
    from rada_export.errors import RadaError

    stats = tta_stats(runtime) if run.tta != "off" else None
    if run.json_out:
        print_json_line({"summary": {"backend": runtime.backend, "precision": runtime.precision, "tta": run.tta,
                                     "predicted": outcome.predicted, "unreadable": [f for f, _ in outcome.unreadable],
                                     "tta_stats": stats}})
    elif outcome.rows:
        console.print(make_table(f"{runtime.description}, tta {run.tta}", ["image", "class", f"top {run.top}"], outcome.rows))
        if stats is not None:
            console.print(describe_tta(stats), markup=False, highlight=False)
    if outcome.unreadable:
        err_console.print(f"skipped {len(outcome.unreadable)} unreadable file(s):", markup=False, highlight=False)
        for path, why in outcome.unreadable:
            err_console.print(f"  {path}: {why}", markup=False, highlight=False)
    if not outcome.predicted:
        raise RadaError(f"none of the {len(outcome.unreadable)} image file(s) could be read",
                        "pass readable JPEG, PNG, WebP, BMP, GIF or TIFF files")


def _runtime(bundle: Path, backend: str, device: str, precision: str, config, names):
    from rada_export.runtimes import load_bundle

    runtime = load_bundle(bundle, backend=backend, device=device, tta=config, precision=precision)
    if names:
        runtime.set_classes(names)
    return runtime


# -- streams ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamRequest:
    source: str
    stride: int
    max_frames: Optional[int]
    timeout_s: float
    save: Optional[Path]
    save_state: Optional[Path]
    top: int
    json_out: bool
    tta: str
    force: bool


def _predict_stream(request: StreamRequest, load) -> None:
    """The stream loop. Its errors reach handle_errors, which ends the JSON lines with one line of
    its own (``json_lines``), so that a reader can parse every line, the error's included."""
    try:
        _check_stream_outputs(request)
        # FFmpeg logs each undecodable frame on stderr; the stream reports the frame itself, once.
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
        os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
        runtime = load()
        stream = runtime.stream(request.source, stride=request.stride, max_frames=request.max_frames,
                                adapt=request.tta != "off", timeout_s=request.timeout_s)
        _run_stream(request, runtime, stream)
    except KeyboardInterrupt:  # before the first frame (while the bundle loads or the source opens)
        err_console.print("stopped by Ctrl-C before the stream started")
        raise typer.Exit(code=130) from None


def _check_stream_outputs(request: StreamRequest) -> None:
    from rada_export import validate
    from rada_export.errors import RadaError

    if request.save is not None:
        validate.output_file(request.save, "save", tuple(VIDEO_CODECS), force=request.force, what="video")
    if request.save_state is not None:
        if request.tta != "continual":
            raise RadaError(f"--save-state writes the adapted head, but this run has --tta {request.tta}",
                            "add --tta continual, or drop --save-state")
        validate.output_file(request.save_state, "save_state", (".npz",), force=request.force, what="state file")


def _run_stream(request: StreamRequest, runtime, stream) -> None:
    video = LabelledVideo(request.save, request.stride) if request.save is not None else None
    status = StatusLine(request, runtime)
    interrupted, done = False, False
    try:
        with status:
            try:
                for frame in stream:
                    if video is not None:
                        video.write(frame, stream.info)
                    if request.json_out:
                        print_json_line(_frame_record(frame, request, runtime, stream))
                    status.update(frame, stream)
            except KeyboardInterrupt:
                interrupted = True
            finally:
                stream.close()
        done = True
    finally:
        if video is not None and done:
            video.finish()
        elif video is not None:
            video.discard()
    if request.save_state is not None:
        _save_state(runtime.state(), request.save_state)
    status.summary(stream, interrupted, [p for p in (request.save, request.save_state) if p is not None])


def _frame_record(frame, request: StreamRequest, runtime, stream) -> dict[str, Any]:
    record: dict[str, Any] = {
        "frame": frame.index, "timestamp_ms": round(frame.timestamp_ms, 3), "label": frame.label, "class": frame.class_name,
        "top": [{"class": c, "probability": round(p, 6)} for c, p in frame.top(request.top)],
    }
    if stream.info is not None and stream.info.live:
        record["dropped"] = frame.dropped
    if request.tta != "off":
        record["tta"] = tta_stats(runtime) or dict(vars(runtime.head.counters))
    return record


def _save_state(state: dict, path: Path) -> None:
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial.npz")
    np.savez(partial, **state)
    os.replace(partial, path)


class StatusLine:
    """A live line (top class, FPS) while frames come, and a summary at the end; --json prints the
    summary on stderr, so that stdout holds only the frames' lines."""

    def __init__(self, request: StreamRequest, runtime):
        self.request = request
        self.runtime = runtime
        self.started = time.perf_counter()
        self.recent: collections.deque = collections.deque(maxlen=30)
        self.live = None
        if not request.json_out and console.is_terminal:
            from rich.live import Live

            self.live = Live("", console=console, refresh_per_second=4, transient=True)

    def __enter__(self) -> "StatusLine":
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def update(self, frame, stream) -> None:
        self.recent.append(time.perf_counter())
        if self.live is None:
            return
        from rich.markup import escape

        name, probability = frame.top(1)[0]
        fps = (len(self.recent) - 1) / (self.recent[-1] - self.recent[0]) if len(self.recent) > 1 else 0.0
        text = f"frame {frame.index}  [bold]{escape(name)}[/bold] {probability:.0%}  {fps:.1f} fps"
        if stream.info is not None and stream.info.live:
            text += f"  dropped {frame.dropped}"
        if self.request.tta == "continual":
            text += f"  updates {self.runtime.head.counters.updates}"
        self.live.update(text)

    def summary(self, stream, interrupted: bool, written: list[Path]) -> None:
        seconds = time.perf_counter() - self.started
        fps = stream.delivered / seconds if seconds > 0 else 0.0
        text = f"{stream.delivered} frames classified in {seconds:.1f} s ({fps:.1f} fps) on {self.runtime.description}"
        if stream.info is not None and stream.info.live:
            text += f", {stream.dropped} dropped while inference was busy"
        stats = tta_stats(self.runtime) if self.request.tta != "off" else None
        if stats is not None:
            text += f"; {describe_tta(stats)}"
        elif self.request.tta == "continual":
            counters = self.runtime.head.counters
            text += f", {counters.updates} head updates, {counters.resets} resets"
        if interrupted:
            text += "; stopped by Ctrl-C"
        text += "".join(f"; wrote {p}" for p in written)
        (err_console if self.request.json_out else console).print(text, markup=False, highlight=False, soft_wrap=True)


class LabelledVideo:
    """The frames with their top class drawn, written beside the target and renamed at the end, so
    that the target is never a half-written video."""

    def __init__(self, path: Path, stride: int):
        self.path = path
        self.partial = path.with_name(f".{path.stem}.partial{path.suffix}")
        self.stride = stride
        self.writer = None
        self.size: tuple[int, int] | None = None

    def write(self, frame, info) -> None:
        from rada_export.runtimes.video_source import import_cv2

        cv2 = import_cv2()
        image = frame.image
        if image.ndim == 2 or image.shape[2] == 1:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        elif image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
        else:
            image = image.copy()
        if self.writer is None:
            self._open(cv2, image, info)
        if (image.shape[1], image.shape[0]) != self.size:  # a live source that changed its resolution
            image = cv2.resize(image, self.size)
        name, probability = frame.top(1)[0]
        text = f"{name} {probability:.0%}"
        scale = max(0.4, image.shape[0] / 600)
        origin = (8, int(8 + 24 * scale))
        cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), max(2, int(4 * scale)), cv2.LINE_AA)
        cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), max(1, int(2 * scale)), cv2.LINE_AA)
        self.writer.write(image)

    def _open(self, cv2, image, info) -> None:
        from rada_export.errors import RadaError

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.size = (image.shape[1], image.shape[0])
        fps = (info.fps / self.stride) if info is not None and info.fps else 25.0
        fourcc = cv2.VideoWriter_fourcc(*VIDEO_CODECS[self.path.suffix.lower()])
        self.writer = cv2.VideoWriter(str(self.partial), fourcc, max(fps, 1.0), self.size)
        if not self.writer.isOpened():
            raise RadaError(f"OpenCV cannot write {self.path.suffix} video to {self.path}",
                            "write an .avi (MJPG), which every OpenCV build writes", field="save")

    def finish(self) -> None:
        if self.writer is not None:
            self.writer.release()
            os.replace(self.partial, self.path)

    def discard(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.partial.unlink(missing_ok=True)
