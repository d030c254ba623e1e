"""Predictions on a video or camera stream, with decoding in a thread of its own.

A decode thread reads the source while the caller's thread runs the model, so that decoding
(OpenCV releases the GIL) overlaps inference. The two meet in a bounded queue:

- files: the thread blocks when the queue is full, so every frame (or every ``stride``-th) is
  predicted, none dropped;
- live sources (cameras, URLs, pipelines): the thread never waits; when the queue is full the
  oldest frame makes room for the newest, and each such frame is counted in ``dropped``.

Frames go to ``Runtime.predict(frame, bgr=True)`` as OpenCV decodes them (BGR uint8): a bundle
whose fused graph takes frames resizes them in the graph, others on the host. Whatever ends the
iteration (its end, ``max_frames``, an error, ``close()``, or the caller leaving a ``for`` loop) stops
the thread and releases the capture it opened.
"""

from __future__ import annotations

import queue
import threading
import time
from contextlib import closing
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from rada_export import validate
from rada_export.errors import RadaError

from .video_source import SourceInfo, SourceSpec, describe, open_capture, resolve

PROP_POS_MSEC = 0
FILE_QUEUE = 4  # frames decoded ahead of inference: enough to hide decoding jitter
LIVE_QUEUE = 1  # live: only the newest frame waits
RETRY_S = 0.01  # live: pause between failed reads of a source that dropped out
THREAD_NAME = "rada-stream-decode"


@dataclass(frozen=True)
class StreamFrame:
    """One predicted frame of a stream.

    ``index``: the frame's position in the source, from 0 (gaps are ``stride`` or dropped frames).
    ``timestamp_ms``: files: the frame's presentation time in the file; live sources: milliseconds
    since the stream opened, on the monotonic clock, taken when the frame was read.
    ``dropped``: live sources: frames dropped so far because inference fell behind (0 for files).
    ``image``: the frame as decoded (BGR uint8 H x W x 3); ``prediction``: a one-row Prediction.
    """

    index: int
    timestamp_ms: float
    prediction: Any
    dropped: int
    image: np.ndarray

    @property
    def label(self) -> int:
        return int(self.prediction.labels[0])

    @property
    def class_name(self) -> str:
        return self.prediction.class_names[0]

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        """The k most probable classes, as (name, probability)."""
        return self.prediction.top(k)[0]


@dataclass(frozen=True)
class DecodedFrame:
    index: int
    timestamp_ms: float
    image: np.ndarray


@dataclass(frozen=True)
class StreamEnd:
    error: RadaError | None = None


@dataclass(frozen=True)
class StreamOptions:
    stride: int = 1
    max_frames: int | None = None
    timeout_s: float = 10.0
    queue_size: int | None = None  # None: 4 for files, 1 for live sources

    def __post_init__(self) -> None:
        validate.integer("stride", self.stride, 1)
        if self.max_frames is not None:
            validate.integer("max_frames", self.max_frames, 1)
        validate.number("timeout_s", self.timeout_s, positive=True)
        if self.queue_size is not None:
            validate.integer("queue_size", self.queue_size, 1)


class DecodeThread:
    """Reads a source in a thread of its own into a bounded queue (see the module's docstring)."""

    def __init__(self, capture: Any, spec: SourceSpec, options: StreamOptions):
        self.capture = capture
        self.spec = spec
        self.options = options
        self.info: SourceInfo = describe(capture, spec)
        size = options.queue_size or (LIVE_QUEUE if spec.live else FILE_QUEUE)
        self.queue: queue.Queue = queue.Queue(maxsize=size)
        self.read = 0  # frames decoded from the source, skipped ones included
        self.dropped = 0
        self.reading_since: float | None = None  # when the read in progress began
        self.failing_since: float | None = None  # live: when reads began to fail in a row
        self._stop = threading.Event()
        self._opened_at = time.monotonic()
        self._last_ms = -1.0
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def next_frame(self) -> DecodedFrame | None:
        """The next frame, None at the end; a RadaError for a bad frame or a source that stalls."""
        try:
            item = self.queue.get(timeout=self.options.timeout_s)
        except queue.Empty:
            raise self._stall_error() from None
        if isinstance(item, StreamEnd):
            if item.error is not None:
                raise item.error
            return None
        return item

    def stop(self, wait_s: float = 1.0) -> None:
        """Ends the thread: it sees the flag within one queue wait or one read. A read that hangs
        (a stalled network source) cannot be interrupted; the daemon thread then ends with the read."""
        self._stop.set()
        self._drain()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(wait_s)
        self._drain()

    # -- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            end = self._read_all()
        except RadaError as err:
            end = StreamEnd(err)
        except Exception as err:  # OpenCV's own errors: the consumer gets one clear line, not a traceback
            end = StreamEnd(RadaError(f"reading {self.spec.name} failed: {type(err).__name__}: {err}",
                                      "check the source; the frames before this one were predicted", field="source"))
        finally:
            if self.spec.owned:
                self.capture.release()
        self._put(end)

    def _read_all(self) -> StreamEnd:
        stride = self.options.stride
        while not self._stop.is_set():
            index = self.read
            wanted = index % stride == 0
            ok, image = self._read_one(wanted)
            if not ok:
                if self.spec.endless:  # a camera or stream dropped out: retry until the consumer's timeout
                    self.failing_since = self.failing_since or time.monotonic()
                    time.sleep(RETRY_S)
                    continue
                return self._end_of_file(index)
            self.failing_since = None
            self.read += 1
            if wanted:
                self._put(DecodedFrame(index, self._timestamp_ms(index), self._checked(image, index)))
        return StreamEnd()

    def _read_one(self, wanted: bool) -> tuple[bool, Any]:
        self.reading_since = time.monotonic()
        try:
            grab = getattr(self.capture, "grab", None)
            if not wanted and grab is not None:  # a skipped frame is decoded but never converted to BGR
                return bool(grab()), None
            ok, image = self.capture.read()
            return bool(ok) and image is not None, image
        finally:
            self.reading_since = None

    def _checked(self, image: Any, index: int) -> np.ndarray:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim not in (2, 3) or image.size == 0:
            what = f"an array of shape {image.shape} and dtype {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
            raise RadaError(f"{self.spec.name} gave frame {index} as {what}, not a uint8 H x W x C image",
                            "make the source return BGR uint8 frames, as cv2.VideoCapture.read() does", field="source")
        return image

    def _end_of_file(self, index: int) -> StreamEnd:
        """A failed read in a file: its end, a truncated file, or one corrupt frame (the next read works)."""
        announced = self.info.frame_count
        if announced <= 0 or announced - index <= max(1, announced // 100):
            return StreamEnd()  # the end, or near enough to a header's estimate of the count
        ok, _ = self._read_one(False)
        if ok:
            return StreamEnd(RadaError(f"frame {index} of {self.spec.name} is corrupt (it does not decode)",
                                       "re-encode the file (ffmpeg -i IN -c:v libx264 OUT.mp4); the frames before it "
                                       "were predicted", field="source"))
        return StreamEnd(RadaError(f"{self.spec.name} ends after {index} of the {announced} frames its header announces: "
                                   "the file is truncated or corrupt",
                                   "re-copy or re-encode the file; the frames before the end were predicted", field="source"))

    def _timestamp_ms(self, index: int) -> float:
        if self.spec.live:
            return (time.monotonic() - self._opened_at) * 1000.0
        try:
            stamp = float(self.capture.get(PROP_POS_MSEC))
        except Exception:  # a capture-like object without positions
            stamp = -1.0
        if not stamp > self._last_ms and index > 0:  # a backend without positions: the frame rate's clock
            fps = self.info.fps or 30.0
            stamp = max(index * 1000.0 / fps, self._last_ms + 1e-3)
        self._last_ms = max(stamp, 0.0)
        return self._last_ms

    def _put(self, item: DecodedFrame | StreamEnd) -> None:
        if self.spec.live and isinstance(item, DecodedFrame):
            while True:  # newest wins: make room by dropping the oldest waiting frame
                try:
                    self.queue.put_nowait(item)
                    return
                except queue.Full:
                    try:
                        self.queue.get_nowait()
                        self.dropped += 1
                    except queue.Empty:
                        pass
        while not self._stop.is_set():  # files lose no frame: wait for room, or for the stop flag
            try:
                self.queue.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def _drain(self) -> None:
        try:
            while True:
                self.queue.get_nowait()
        except queue.Empty:
            pass

    def _stall_error(self) -> RadaError:
        wait = self.options.timeout_s
        if self.failing_since is not None:
            why = "its reads fail: the camera or stream was disconnected or ended"
        elif self.reading_since is not None:
            why = "a read is blocked: the source stalled"
        elif not self._thread.is_alive():
            why = "its decode thread ended"
        else:
            why = "it is slower than that"
        return RadaError(f"{self.spec.name} gave no frame for {wait:g} s ({why})",
                         f"check the source; for a source that starts slowly, wait longer (timeout_s={max(30, 3 * wait):g})",
                         field="timeout_s")


def open_reader(spec: SourceSpec, options: StreamOptions) -> DecodeThread:
    """Opens the source for a decode thread, not started yet."""
    return DecodeThread(open_capture(spec, options.timeout_s), spec, options)


def frames_of(reader: DecodeThread, max_frames: int | None = None) -> Iterator[DecodedFrame]:
    """Starts ``reader`` and gives its frames, at most ``max_frames``. Closing the generator, or
    letting it go, stops the thread and releases the capture."""
    reader.start()
    delivered = 0
    try:
        while max_frames is None or delivered < max_frames:
            frame = reader.next_frame()
            if frame is None:
                return
            delivered += 1
            yield frame
    finally:
        reader.stop()


@dataclass
class StreamState:
    """What a stream's generator shares with its FrameStream (never the FrameStream itself: the
    generator must not keep it alive, so that dropping the stream closes the generator at once)."""

    reader: DecodeThread | None = None
    delivered: int = 0


class FrameStream:
    """An iterator of :class:`StreamFrame`: ``Runtime.stream`` returns one.

    It opens the source on the first ``next()`` (a missing file is refused at once) and stops its
    decode thread when it ends, is closed, or is dropped (leaving a ``for`` loop); it is also a
    context manager. ``info`` describes the source once it is open; ``read``, ``delivered`` and
    ``dropped`` count the frames decoded, predicted, and dropped by a live source.
    """

    def __init__(self, runtime: Any, source: Any, options: StreamOptions, adapt: bool = False, live: bool | None = None):
        if adapt and getattr(runtime, "tta", None) is None:
            raise RadaError("stream(adapt=True) needs test-time adaptation settings",
                            "load the bundle with tta=TTAConfig(mode='continual')", field="adapt")
        self.options = options
        self.adapt = adapt
        self.spec = resolve(source, live)
        self._state = StreamState()
        self._frames = predicted_frames(runtime, self.spec, options, adapt, self._state)

    @property
    def info(self) -> SourceInfo | None:
        return None if self._state.reader is None else self._state.reader.info

    @property
    def read(self) -> int:
        return 0 if self._state.reader is None else self._state.reader.read

    @property
    def dropped(self) -> int:
        return 0 if self._state.reader is None else self._state.reader.dropped

    @property
    def delivered(self) -> int:
        return self._state.delivered

    def __iter__(self) -> "FrameStream":
        return self

    def __next__(self) -> StreamFrame:
        return next(self._frames)

    def close(self) -> None:
        self._frames.close()

    def __enter__(self) -> "FrameStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def predicted_frames(runtime: Any, spec: SourceSpec, options: StreamOptions, adapt: bool,
                     state: StreamState) -> Iterator[StreamFrame]:
    state.reader = reader = open_reader(spec, options)
    with closing(frames_of(reader, options.max_frames)) as frames:
        for frame in frames:
            prediction = runtime.predict(frame.image, bgr=True, adapt=adapt)
            state.delivered += 1
            yield StreamFrame(frame.index, frame.timestamp_ms, prediction, reader.dropped, frame.image)
