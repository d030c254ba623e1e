"""A callback-style classifier for robotics stacks (ROS 2 nodes, GStreamer appsinks, SDK callbacks).

Why not ``Runtime.stream``: stream() pulls frames from a source it opens itself (a file, a camera
index, a URL, a pipeline) and decodes them in its own thread. A robot stack works the other way
round: its driver pushes each frame to a callback it owns, in its own thread, with its own stamp.
So the callback here only queues the frame and returns at once; a bounded queue keeps the newest
(the oldest is dropped when the classifier falls behind, as stream() does with live sources), and
one worker thread predicts. The runtime itself is safe to share between threads (docs/runtime.md,
"Threads"): one worker is a choice that keeps results in stamp order and continual adaptation
frame after frame, not a limit; run more workers on the same runtime for more throughput.
Results go to the callback you give, with the frame's stamp.

    node = ClassifierNode("bundle/", on_result=lambda r: publisher.publish(...), tta="continual")
    node.start()
    ...  # in the camera driver's callback:  node.on_image(frame_bgr, stamp)
    node.stop()

In ROS 2, wrap it: convert sensor_msgs/Image with cv_bridge to a BGR array in the subscription
callback, call ``on_image``, and publish ``Result`` fields in ``on_result``.

Export the bundle with ``--embed-preprocess --channel-order bgr`` (``rgb`` for rgb8 images) and run
with ``tta="off"``: the frame, at the camera's full size, goes into the graph as it is (BGRA/bgra8
too: the graph drops alpha), which resizes it on the GPU; on a CPU backend the host first does the
graph's integer box reduction (OpenCV), and the graph the rest.

The node loads the bundle with ``load_bundle``'s defaults: each graph runs on the best TensorRT
engine built on this device (``rada-export trt --bundle bundle/`` builds the fused graph, the image
encoder that continual adaptation runs, and the text encoder), else on ONNX Runtime.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from rada_export.runtimes import TTAConfig, load_bundle


@dataclass(frozen=True)
class Result:
    stamp: float
    label: str
    probability: float
    top: list[tuple[str, float]]


class ClassifierNode:
    def __init__(self, bundle: str, on_result: Callable[[Result], None], tta: str = "continual", queue_size: int = 4,
                 bgr: bool = True, top: int = 3):
        self._runtime = load_bundle(bundle, tta=TTAConfig(mode="continual") if tta == "continual" else None)
        self._adapt = tta == "continual"
        self._on_result = on_result
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._bgr = bgr
        self._top = top
        self._thread: threading.Thread | None = None
        # Frames go into the graph as they are when it resizes them and the fused graph runs.
        self.raw_frames = self._runtime.manifest.frames is not None and not self._adapt
        self.dropped = 0
        self.errors: list[str] = []

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="rada-classifier", daemon=True)
        self._thread.start()

    def on_image(self, frame: np.ndarray, stamp: float) -> None:
        """Called by the sensor driver; never blocks."""
        while True:
            try:
                self._queue.put_nowait((frame, stamp))
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()  # drop the oldest: a robot wants the newest view
                    self.dropped += 1
                except queue.Empty:
                    pass

    def stop(self, timeout: float = 10.0) -> None:
        """Processes what is queued, then ends the worker."""
        self._queue.put((None, 0.0))
        if self._thread is not None:
            self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            frame, stamp = self._queue.get()
            if frame is None:
                return
            try:
                prediction = self._runtime.predict(frame, bgr=self._bgr, adapt=self._adapt)
            except Exception as err:  # a bad frame must not kill the node; report and go on
                self.errors.append(str(err))
                continue
            top = prediction.top(self._top)[0]
            self._on_result(Result(stamp, top[0][0], top[0][1], top))
