"""Classify a camera or video stream with a rada-export bundle, adapting the head as frames arrive.

    python examples/camera_loop.py --bundle bundle/ --source 0               # first camera
    python examples/camera_loop.py --bundle bundle/ --source clip.mp4 --tta continual
    python examples/camera_loop.py --bundle bundle/ --tta off --source \
        "nvarguscamerasrc ! video/x-raw(memory:NVMM),width=1920,height=1080 ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1"

``Runtime.stream`` does the capture: it opens the source (a text holding ``!`` is a GStreamer
pipeline), decodes in a thread of its own while the model runs, reads every frame of a file, and
keeps only the newest frame of a live camera (``frame.dropped`` counts the others).

At camera speed, export the bundle with ``--embed-preprocess --channel-order bgr``: OpenCV's BGR
frames then go into the graph as they are (no host resize, no float conversion, no channel copy)
and the engine resizes them on the GPU. That path is the fused graph's, so it applies with
``--tta off``; with continual adaptation each frame takes the fast host path (Pillow, reducing
first) into the image encoder.

``load_bundle(bundle)`` with its defaults runs each graph on the best TensorRT engine built on this
device, else on ONNX Runtime; ``rada-export trt --bundle bundle/`` builds them all: the fused graph
(``--tta off``), the image encoder (continual adaptation) and the text encoder. The summary's
backend line (``runtime.description``) says which graph runs where.

Needs only the device install (rada-export[cpu] or [gpu], on a Jetson rada-export[jetson] beside
JetPack's TensorRT and OpenCV, plus rada-export[video] elsewhere); no PyTorch.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

from rada_export.errors import RadaError
from rada_export.runtimes import TTAConfig, load_bundle


@dataclass
class StreamSummary:
    frames: int = 0
    labels: list[str] = field(default_factory=list)
    seconds: float = 0.0
    backend: str = ""
    raw_frames: bool = False  # frames went into the graph as they are (the graph resizes)
    frame_size: tuple[int, int] = (0, 0)  # (width, height) of the last frame
    dropped: int = 0  # live sources: frames that came while the model was busy
    adaptation: dict = field(default_factory=dict)  # Runtime.stats at the end: updates, skips, resets

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


def run(bundle: str, source: str | int, tta: str = "continual", max_frames: int | None = None, show: bool = False,
        stride: int = 1) -> StreamSummary:
    runtime = load_bundle(bundle, tta=TTAConfig(mode="continual") if tta == "continual" else None)
    summary = StreamSummary(backend=runtime.description, raw_frames=runtime.manifest.frames is not None and tta == "off")
    start = time.perf_counter()
    try:
        with runtime.stream(source, stride=stride, max_frames=max_frames, adapt=tta == "continual") as stream:
            for frame in stream:
                name, probability = frame.top(1)[0]
                summary.frames += 1
                summary.frame_size = (frame.image.shape[1], frame.image.shape[0])
                summary.labels.append(name)
                summary.dropped = frame.dropped
                if show and not draw(frame.image, f"{name} {probability:.0%}"):
                    break
    except RadaError as err:  # a missing file, a camera that does not open, a stream that stalls
        raise SystemExit(f"error: {err.problem}\n  fix: {err.fix}") from None
    finally:
        if show:
            import cv2

            cv2.destroyAllWindows()
    summary.seconds = time.perf_counter() - start
    if tta != "off":
        # Continual adaptation can skip every frame (too unsure to learn from): say what it did.
        summary.adaptation = runtime.stats.to_dict()
    return summary


def draw(image, text: str) -> bool:
    """Shows the frame with its label; False once the user presses q."""
    import cv2

    image = image.copy()
    cv2.putText(image, text, (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (0, 255, 0), 2)
    cv2.imshow("rada-export", image)
    return cv2.waitKey(1) & 0xFF != ord("q")


def main(argv: list[str] | None = None) -> StreamSummary:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--source", default="0", help="camera index, video file, URL or GStreamer pipeline")
    parser.add_argument("--tta", choices=("off", "continual"), default="continual")
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument("--stride", type=int, default=1, help="classify every n-th frame")
    parser.add_argument("--show", action="store_true", help="draw the label in a window (needs a display)")
    args = parser.parse_args(argv)
    summary = run(args.bundle, args.source, args.tta, args.max_frames, args.show, args.stride)
    path = "into the graph as they are" if summary.raw_frames else "resized on the host"
    dropped = f", {summary.dropped} dropped" if summary.dropped else ""
    print(f"{summary.frames} frames ({summary.frame_size[0]}x{summary.frame_size[1]}, {path}) in {summary.seconds:.2f} s "
          f"({summary.fps:.1f} fps{dropped}) on {summary.backend}")
    if summary.adaptation:
        stats = summary.adaptation
        print(f"adaptation: {stats['updates']} head updates, {stats['skipped_unconfident']} frames skipped as unconfident, "
              f"{stats['skipped_nonfinite']} as non-finite, {stats['resets']} resets")
    return summary


if __name__ == "__main__":
    main()
