"""The examples run: a camera loop on a generated video file, and the callback node."""

from __future__ import annotations

import importlib.util
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is part of the dev extra")

from rada_export.export.bundle import ExportRequest, export_bundle  # noqa: E402
from rada_export.synthetic import CLASSES, draw_image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_clip) -> Path:
    out = tmp_path_factory.mktemp("ex") / "bundle"
    export_bundle(ExportRequest(out=out, model="rada-tiny-ViT", pretrained="none", classes=[c[0] for c in CLASSES],
                                verify=False), clip=tiny_clip)
    return out


def frames(n: int, size: int = 96):
    rng = np.random.default_rng(0)
    for i in range(n):
        _, kind, colour = CLASSES[i % len(CLASSES)]
        rgb = np.asarray(draw_image(kind, colour, size, rng))
        yield rgb[:, :, ::-1].copy()  # OpenCV frames are BGR


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 96))
    for frame in frames(24):
        writer.write(frame)
    writer.release()
    assert path.stat().st_size > 0
    return path


def test_camera_loop_on_a_video_file(bundle, video, capsys):
    camera = load_example("camera_loop")
    summary = camera.main(["--bundle", str(bundle), "--source", str(video), "--tta", "continual"])
    assert summary.frames == 24
    assert set(summary.labels) <= {c[0] for c in CLASSES}
    out = capsys.readouterr().out
    assert "24 frames" in out and "adaptation: " in out
    adaptation = summary.adaptation
    assert adaptation["mode"] == "continual" and adaptation["frames"] == 24
    assert adaptation["updates"] + adaptation["skipped_unconfident"] + adaptation["skipped_nonfinite"] == 24
    every_other = camera.run(str(bundle), str(video), tta="off", max_frames=5, stride=2)
    assert every_other.frames == 5


@pytest.fixture(scope="module")
def frames_bundle(tmp_path_factory, tiny_clip) -> Path:
    out = tmp_path_factory.mktemp("ex-frames") / "bundle"
    export_bundle(ExportRequest(out=out, model="rada-tiny-ViT", pretrained="none", classes=[c[0] for c in CLASSES],
                                embed_preprocess=True, channel_order="bgr", verify=False), clip=tiny_clip)
    return out


@pytest.fixture(scope="module")
def hd_video(tmp_path_factory) -> Path:
    """A 640 x 360 video: the graph, not the host, must resize its frames."""
    path = tmp_path_factory.mktemp("video") / "hd.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 360))
    for frame in frames(8, size=360):
        writer.write(np.ascontiguousarray(np.pad(frame, ((0, 0), (140, 140), (0, 0)), mode="edge")))
    writer.release()
    return path


def test_camera_loop_feeds_raw_frames_to_a_frames_bundle(frames_bundle, bundle, hd_video, capsys):
    camera = load_example("camera_loop")
    summary = camera.main(["--bundle", str(frames_bundle), "--source", str(hd_video), "--tta", "off"])
    assert summary.frames == 8 and summary.raw_frames and summary.frame_size == (640, 360)
    assert "640x360, into the graph as they are" in capsys.readouterr().out
    # the same model with host resizing into a pixels graph labels the frames alike
    host = camera.run(str(bundle), str(hd_video), tta="off")
    assert not host.raw_frames
    assert sum(a == b for a, b in zip(summary.labels, host.labels)) >= 7, (summary.labels, host.labels)
    adapting = camera.run(str(frames_bundle), str(hd_video), tta="continual", max_frames=3)
    assert adapting.frames == 3 and not adapting.raw_frames


def test_camera_loop_refuses_a_missing_source(bundle, tmp_path):
    camera = load_example("camera_loop")
    with pytest.raises(SystemExit, match="missing.avi does not exist"):
        camera.run(str(bundle), str(tmp_path / "missing.avi"))


def test_callback_node_delivers_results_in_order(bundle):
    robot = load_example("robot_callback")
    results, done = [], threading.Event()

    def on_result(result):
        results.append(result)
        if len(results) == 6:
            done.set()

    node = robot.ClassifierNode(str(bundle), on_result, tta="continual", queue_size=16)
    node.start()
    for stamp, frame in enumerate(frames(6)):
        node.on_image(frame, float(stamp))
    assert done.wait(60)
    node.on_image(np.zeros((4, 4), np.float64), 99.0)  # a bad frame is reported, the node goes on
    node.on_image(next(frames(1)), 100.0)
    node.stop()
    assert [r.stamp for r in results] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 100.0]
    assert len(node.errors) == 1 and "uint8" in node.errors[0]
    assert all(0 < r.probability <= 1 and len(r.top) == 3 for r in results)


def test_callback_node_on_raw_bgra_frames(frames_bundle):
    robot = load_example("robot_callback")
    results, done = [], threading.Event()

    def on_result(result):
        results.append(result)
        if len(results) == 3:
            done.set()

    node = robot.ClassifierNode(str(frames_bundle), on_result, tta="off", queue_size=8)
    assert node.raw_frames
    node.start()
    for stamp, frame in enumerate(frames(3, size=300)):
        bgra = np.concatenate([frame, np.full(frame.shape[:2] + (1,), 255, np.uint8)], axis=2)  # bgra8, as many drivers give
        node.on_image(bgra, float(stamp))
    assert done.wait(60)
    node.stop()
    assert not node.errors and [r.stamp for r in results] == [0.0, 1.0, 2.0]


def test_callback_node_drops_the_oldest_frames_when_behind(bundle):
    robot = load_example("robot_callback")
    node = robot.ClassifierNode(str(bundle), lambda r: None, queue_size=2)  # not started: nothing is consumed
    for stamp, frame in enumerate(frames(5)):
        node.on_image(frame, float(stamp))
    assert node.dropped == 3
    assert [node._queue.get_nowait()[1] for _ in range(2)] == [3.0, 4.0]
