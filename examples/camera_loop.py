"""Classify a camera or video stream with a rada-export bundle, adapting the head as frames arrive.

    python examples/camera_loop.py --bundle bundle/ --source 0               # first camera
    python examples/camera_loop.py --bundle bundle/ --source clip.mp4 --tta continual
    python examples/camera_loop.py --bundle bundle/ --tta off --gstreamer --source \
        "nvarguscamerasrc ! video/x-raw(memory:NVMM),width=1920,height=1080 ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1"

At camera speed, export the bundle with ``--embed-preprocess --channel-order bgr``: OpenCV's BGR
frames then go into the graph as they are (no host resize, no float conversion, no channel copy)
and the engine resizes them on the GPU. That path is the fused graph's, so it applies with
``--tta off`` (or between adaptation steps); with continual adaptation each frame takes the fast
host path (Pillow, reducing first) into the image encoder.

Needs only the device install (rada-export[cpu] or [gpu], plus opencv-python); no PyTorch.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import cv2

from rada_export.runtimes import TTAConfig, load_bundle


@dataclass
class StreamSummary:
    frames: int = 0
    labels: list[str] = field(default_factory=list)
    seconds: float = 0.0
    backend: str = ""
    raw_frames: bool = False  # frames went into the graph as they are (the graph resizes)
    frame_size: tuple[int, int] = (0, 0)  # (width, height) of the last frame

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


def run(bundle: str, source: str | int, tta: str = "continual", max_frames: int | None = None, show: bool = False,
        every: int = 1, gstreamer: bool = False) -> StreamSummary:
    runtime = load_bundle(bundle, tta=TTAConfig(mode="continual") if tta == "continual" else None)
    # A GStreamer pipeline ending in appsink (Jetson: nvarguscamerasrc ... nvvidconv) or any source OpenCV opens.
    capture = cv2.VideoCapture(source, cv2.CAP_GSTREAMER) if gstreamer else cv2.VideoCapture(source)
    if not capture.isOpened():
        raise SystemExit(f"cannot open video source {source!r}")
    summary = StreamSummary(backend=runtime.description, raw_frames=runtime.manifest.frames is not None and tta == "off")
    start = time.perf_counter()
    try:
        index = 0
        while max_frames is None or summary.frames < max_frames:
            ok, frame = capture.read()  # BGR uint8 H x W x 3, as OpenCV gives it
            if not ok:
                break
            index += 1
            if index % every:
                continue
            prediction = runtime.predict(frame, bgr=True, adapt=tta == "continual")
            name, probability = prediction.top(1)[0][0]
            summary.frames += 1
            summary.frame_size = (frame.shape[1], frame.shape[0])
            summary.labels.append(name)
            if show:
                cv2.putText(frame, f"{name} {probability:.0%}", (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (0, 255, 0), 2)
                cv2.imshow("rada-export", frame)
                if cv2.waitKey(1) & 0xFF == ord("q"):
                    break
    finally:
        capture.release()
        if show:
            cv2.destroyAllWindows()
    summary.seconds = time.perf_counter() - start
    return summary


def main(argv: list[str] | None = None) -> StreamSummary:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--source", default="0", help="camera index or video file/URL")
    parser.add_argument("--tta", choices=("off", "continual"), default="continual")
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument("--every", type=int, default=1, help="classify every n-th frame")
    parser.add_argument("--show", action="store_true", help="draw the label in a window (needs a display)")
    parser.add_argument("--gstreamer", action="store_true", help="--source is a GStreamer pipeline ending in appsink")
    args = parser.parse_args(argv)
    source = int(args.source) if args.source.isdigit() else args.source
    summary = run(args.bundle, source, args.tta, args.max_frames, args.show, args.every, args.gstreamer)
    path = "into the graph as they are" if summary.raw_frames else "resized on the host"
    print(f"{summary.frames} frames ({summary.frame_size[0]}x{summary.frame_size[1]}, {path}) in {summary.seconds:.2f} s "
          f"({summary.fps:.1f} fps) on {summary.backend}")
    return summary


if __name__ == "__main__":
    main()
