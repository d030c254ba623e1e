"""Video sources for streams: what a source names, and opening it with OpenCV.

A source is a video file, a camera index (``0`` or ``"0"``), a stream URL (RTSP, HTTP, ...), a
GStreamer pipeline ending in ``appsink`` (any text holding ``!``), or an object that reads like
``cv2.VideoCapture`` (``read() -> (ok, frame)``, optionally ``grab()``, ``get(prop)`` and
``release()``). OpenCV is imported only here and only when a stream opens, so the runtime keeps
working without it; it comes with the ``video`` extra, and on a Jetson JetPack's own OpenCV (built
with GStreamer) is the one to use.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rada_export.errors import RadaError

FILE, CAMERA, URL, GSTREAMER, CAPTURE = "file", "camera", "url", "gstreamer", "capture"
URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
FIELD = "source"
# The CAP_PROP_* numbers of OpenCV, so that sources given as objects need no cv2 import.
PROP_POS_MSEC, PROP_FPS, PROP_FRAME_COUNT, PROP_WIDTH, PROP_HEIGHT = 0, 5, 7, 3, 4


@dataclass(frozen=True)
class SourceSpec:
    """A source as understood before it opens.

    ``live``: frames come at the source's pace and the newest wins (cameras, URLs, pipelines);
    otherwise every frame is read and none dropped (files). ``endless``: a failed read means the
    source dropped out (retried until the stream's timeout) rather than its end.
    """

    kind: str  # file | camera | url | gstreamer | capture
    target: Any  # the path, camera index, URL, pipeline or capture object
    live: bool
    endless: bool
    name: str  # for messages: URL credentials hidden

    @property
    def owned(self) -> bool:
        """Whether the stream opened the capture itself (and so releases it); a caller's object stays open."""
        return self.kind != CAPTURE


@dataclass(frozen=True)
class SourceInfo:
    """What an opened source says about itself (0 where it does not say)."""

    kind: str
    name: str
    live: bool
    fps: float
    width: int
    height: int
    frame_count: int  # as the file's header announces it; 0 for cameras, streams and unknown counts


def resolve(source: Any, live: bool | None = None) -> SourceSpec:
    """What ``source`` names; a missing file is refused here, before anything opens."""
    if live is not None and not isinstance(live, bool):
        raise RadaError(f"live must be True, False or None, got {live!r}", "pass live=True, live=False or leave it out",
                        field="live")
    if callable(getattr(source, "read", None)):
        return SourceSpec(CAPTURE, source, _frame_count(source) <= 0 if live is None else live, False, type(source).__name__)
    if isinstance(source, bool) or not isinstance(source, (int, str, os.PathLike)):
        raise RadaError(f"source must be a video file, a camera index, a URL or a GStreamer pipeline, got {type(source).__name__}",
                        "pass a path, source=0 for the first camera, an rtsp:// URL, or a pipeline ending in appsink",
                        field=FIELD)
    if isinstance(source, int) or (isinstance(source, str) and source.strip().isdigit()):
        index = int(source)
        if index < 0:
            raise RadaError(f"camera index {index} is negative", "pass source=0 for the first camera", field=FIELD)
        return SourceSpec(CAMERA, index, True if live is None else live, True, f"camera {index}")
    text = os.fspath(source)
    if isinstance(source, str) and "!" in text and not Path(text).exists():
        return SourceSpec(GSTREAMER, text, True if live is None else live, True, "GStreamer pipeline")
    if isinstance(source, str) and URL_SCHEME.match(text):
        is_file_url = text.lower().startswith("file://")
        return SourceSpec(URL, text, (not is_file_url) if live is None else live, not is_file_url, hide_credentials(text))
    path = Path(text).expanduser()
    if not path.is_file():
        what = "is a folder, not a video file" if path.is_dir() else "does not exist"
        raise RadaError(f"video file {path} {what}",
                        "pass an existing video file, a camera index (source=0), a stream URL or a GStreamer pipeline",
                        field=FIELD)
    return SourceSpec(FILE, str(path), bool(live), False, str(path))


def hide_credentials(url: str) -> str:
    """rtsp://user:secret@host/... as rtsp://***@host/...: messages and logs must not print passwords."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1***@", url)


def import_cv2():
    try:
        import cv2
    except ImportError:
        raise RadaError("reading video needs OpenCV, which is not installed",
                        "pip install 'rada-export[video]' (on a Jetson, use JetPack's OpenCV: sudo apt install python3-opencv)",
                        field=FIELD) from None
    return cv2


def open_capture(spec: SourceSpec, timeout_s: float) -> Any:
    """The opened capture of ``spec``, or a RadaError that says which kind of source failed and why."""
    if spec.kind == CAPTURE:
        return spec.target
    cv2 = import_cv2()
    if spec.kind == GSTREAMER:
        if not _has_gstreamer(cv2):
            raise RadaError("this OpenCV is built without GStreamer, so it cannot open a pipeline",
                            "on a Jetson use JetPack's OpenCV (python3-opencv, not the pip wheels); elsewhere an OpenCV "
                            "built with GStreamer, or pass a camera index or a URL instead", field=FIELD)
        capture = cv2.VideoCapture(spec.target, cv2.CAP_GSTREAMER)
    elif spec.kind == URL:
        capture = _open_url(cv2, spec.target, timeout_s)
    else:
        capture = cv2.VideoCapture(spec.target)
    if capture.isOpened():
        return capture
    capture.release()
    raise _open_error(spec, timeout_s)


def describe(capture: Any, spec: SourceSpec) -> SourceInfo:
    get = getattr(capture, "get", None)

    def prop(number: int) -> float:
        try:
            value = float(get(number)) if get is not None else 0.0
        except Exception:  # a capture-like object may not know the property
            return 0.0
        return value if value > 0 and value == value else 0.0

    count = 0 if spec.endless else int(prop(PROP_FRAME_COUNT))  # cameras and streams report -1, 0 or a guess
    return SourceInfo(spec.kind, spec.name, spec.live, prop(PROP_FPS), int(prop(PROP_WIDTH)), int(prop(PROP_HEIGHT)), count)


def _frame_count(capture: Any) -> float:
    try:
        return float(capture.get(PROP_FRAME_COUNT))
    except Exception:  # no get(), or it refuses the property: nothing says it is a file
        return 0.0


def _has_gstreamer(cv2) -> bool:
    info = cv2.getBuildInformation()
    match = re.search(r"GStreamer:\s*(\S+)", info)
    return bool(match) and match.group(1).upper() != "NO"


def _open_url(cv2, url: str, timeout_s: float):
    """Through FFmpeg with open and read timeouts, so that a dead host cannot hold the stream forever."""
    millis = int(timeout_s * 1000)
    params = [getattr(cv2, "CAP_PROP_OPEN_TIMEOUT_MSEC", 53), millis, getattr(cv2, "CAP_PROP_READ_TIMEOUT_MSEC", 54), millis]
    try:
        return cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
    except cv2.error:  # an OpenCV without FFmpeg or these properties: any backend, without timeouts
        return cv2.VideoCapture(url)


def _open_error(spec: SourceSpec, timeout_s: float) -> RadaError:
    if spec.kind == FILE:
        return RadaError(f"OpenCV cannot read video file {spec.name} (not a video, or a codec this OpenCV lacks)",
                         "check that the file plays; convert it with `ffmpeg -i IN -c:v libx264 OUT.mp4` if its codec is rare",
                         field=FIELD)
    if spec.kind == CAMERA:
        return RadaError(f"camera {spec.target} does not open",
                         "check that the camera is connected and not used by another program "
                         "(Linux: `v4l2-ctl --list-devices` lists the indices)", field=FIELD)
    if spec.kind == URL:
        return RadaError(f"stream {spec.name} does not open (waited up to {timeout_s:g} s)",
                         "check the URL, the network and the credentials (try it with `ffplay URL`)", field=FIELD)
    return RadaError("the GStreamer pipeline does not open",
                     "test it with `gst-launch-1.0` (fakesink in place of appsink); it must end in appsink and give BGR "
                     "frames (videoconvert ! video/x-raw,format=BGR ! appsink)", field=FIELD)
