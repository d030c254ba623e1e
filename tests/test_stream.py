"""Streams: Runtime.stream and `predict --source` on videos made here with OpenCV.

Every stream is checked against the runtime's own per-frame predict on the same frames, read back
with OpenCV; the decode thread must lose no frame of a file, keep the newest of a live source, end
with the stream however it ends, and turn bad sources into one clear error.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is part of the dev extra")

from typer.testing import CliRunner  # noqa: E402

from rada_export.cli.app import app  # noqa: E402
from rada_export.errors import RadaError  # noqa: E402
from rada_export.export.bundle import ExportRequest, export_bundle  # noqa: E402
from rada_export.runtimes import TTAConfig, load_bundle  # noqa: E402
from rada_export.runtimes.stream import THREAD_NAME  # noqa: E402
from rada_export.synthetic import CLASSES, draw_image  # noqa: E402

FPS = 25
FRAMES = 30
CLASS_NAMES = [c[0] for c in CLASSES]
runner = CliRunner()


def synthetic_frames(n: int, width: int, height: int, seed: int = 0):
    """BGR frames of the synthetic classes' shapes, on a background that moves from frame to frame."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        _, kind, colour = CLASSES[(i // 3) % len(CLASSES)]
        shape = np.asarray(draw_image(kind, colour, min(width, height), rng))[:, :, ::-1]
        frame = np.full((height, width, 3), (i * 7) % 200, np.uint8)
        frame[:, (width - shape.shape[1]) // 2:][:, : shape.shape[1]] = shape
        yield np.ascontiguousarray(frame)


def write_video(path: Path, fourcc: str, n: int = FRAMES, width: int = 128, height: int = 96) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), FPS, (width, height))
    if not writer.isOpened():
        pytest.skip(f"this OpenCV build does not write {fourcc} to {path.suffix}")
    for frame in synthetic_frames(n, width, height):
        writer.write(frame)
    writer.release()
    return path


def decoded(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def decode_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME and t.is_alive()]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_clip) -> Path:
    out = tmp_path_factory.mktemp("stream") / "bundle"
    export_bundle(ExportRequest(out=out, model="rada-tiny-ViT", pretrained="none", classes=CLASS_NAMES, verify=False),
                  clip=tiny_clip)
    return out


@pytest.fixture(scope="module")
def frames_bundle(tmp_path_factory, tiny_clip) -> Path:
    out = tmp_path_factory.mktemp("stream-frames") / "bundle"
    export_bundle(ExportRequest(out=out, model="rada-tiny-ViT", pretrained="none", classes=CLASS_NAMES,
                                embed_preprocess=True, channel_order="bgr", verify=False), clip=tiny_clip)
    return out


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="module")
def avi(videos) -> Path:
    return write_video(videos / "clip.avi", "MJPG")


@pytest.fixture(scope="module")
def runtime(bundle):
    return load_bundle(bundle, backend="onnxruntime", device="cpu")


@pytest.fixture(autouse=True)
def no_thread_left():
    yield
    deadline = time.monotonic() + 2
    while decode_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not decode_threads(), "a decode thread outlived its stream"


# -- files: every frame, the same predictions as predict ---------------------------------------------


@pytest.mark.parametrize("container", ["avi", "mp4"])
def test_stream_equals_per_frame_predict(runtime, avi, videos, container):
    path = avi if container == "avi" else write_video(videos / "clip.mp4", "mp4v")
    frames = decoded(path)
    assert len(frames) == FRAMES
    out = list(runtime.stream(path))
    assert [f.index for f in out] == list(range(FRAMES))
    stamps = [f.timestamp_ms for f in out]
    assert np.allclose(stamps, np.arange(FRAMES) * 1000 / FPS, atol=1.0), stamps
    assert all(f.dropped == 0 for f in out)
    for frame, image in zip(out, frames):
        want = runtime.predict(image, bgr=True)
        assert np.array_equal(frame.image, image)
        assert frame.label == int(want.labels[0]) and frame.class_name == want.class_names[0]
        assert np.abs(frame.prediction.logits - want.logits).max() <= 1e-5
        assert frame.top(2) == want.top(2)[0]


def test_frames_bundle_gets_the_raw_frame(frames_bundle, videos, monkeypatch):
    path = write_video(videos / "wide.avi", "MJPG", n=6, width=160, height=120)
    rt = load_bundle(frames_bundle, backend="onnxruntime", device="cpu")
    runner_ = rt.fused_runner()
    fed, real_run = [], runner_.run
    monkeypatch.setattr(runner_, "run", lambda feeds: fed.append(feeds["frames"]) or real_run(feeds))
    out = list(rt.stream(path))
    assert len(out) == 6 and len(fed) == 6
    assert all(f.dtype == np.uint8 and f.shape == (1, 120, 160, 3) for f in fed)  # no host resize
    for frame, image in zip(out, decoded(path)):
        assert np.abs(frame.prediction.logits - rt.predict(image, bgr=True).logits).max() <= 1e-5


def test_stride_and_max_frames(runtime, avi):
    every = list(runtime.stream(avi))
    strided = list(runtime.stream(avi, stride=4))
    assert [f.index for f in strided] == list(range(0, FRAMES, 4))
    assert [f.timestamp_ms for f in strided] == [every[i].timestamp_ms for i in range(0, FRAMES, 4)]
    assert [f.label for f in strided] == [every[i].label for i in range(0, FRAMES, 4)]
    stream = runtime.stream(avi, stride=3, max_frames=4)
    assert [f.index for f in stream] == [0, 3, 6, 9]
    assert stream.delivered == 4 and stream.dropped == 0 and stream.info.frame_count == FRAMES
    assert stream.info.fps == FPS and (stream.info.width, stream.info.height) == (128, 96)


def test_continual_adaptation_over_a_stream_equals_a_serial_replay(bundle, avi):
    # Every frame confident enough to learn from, a step every 2 frames: the head really moves.
    tta = TTAConfig(mode="continual", continual_batch=2, continual_lr=1e-3, e_margin=1.0)
    streamed = load_bundle(bundle, backend="onnxruntime", device="cpu", tta=tta)
    out = list(streamed.stream(avi, adapt=True))
    replay = load_bundle(bundle, backend="onnxruntime", device="cpu", tta=tta)
    serial = [replay.predict(image, bgr=True, adapt=True) for image in decoded(avi)]
    assert streamed.head.counters.updates == FRAMES // 2 == replay.head.counters.updates
    assert len(out) == len(serial) == FRAMES
    for frame, want in zip(out, serial):
        assert np.abs(frame.prediction.logits - want.logits).max() <= 1e-6
    a, b = streamed.state(), replay.state()
    assert all(np.array_equal(a[k], b[k]) for k in a if k.startswith("weights."))
    frozen = load_bundle(bundle, backend="onnxruntime", device="cpu").predict(decoded(avi)[-1], bgr=True)
    assert np.abs(out[-1].prediction.logits - frozen.logits).max() > 1e-4  # adaptation changed the head


# -- bad files -----------------------------------------------------------------------------------------


def test_a_truncated_file_gives_its_frames_then_a_clear_error(runtime, avi, videos):
    data = avi.read_bytes()
    path = videos / "truncated.avi"
    path.write_bytes(data[: len(data) // 2])
    whole = decoded(avi)
    got = []
    with pytest.raises(RadaError, match=r"truncated.avi ends after \d+ of the 30 frames its header announces") as err:
        for frame in runtime.stream(path):
            got.append(frame)
    assert err.value.field == "source"
    assert 5 < len(got) < FRAMES and [f.index for f in got] == list(range(len(got)))
    # the frame the cut runs through may decode in part (FFmpeg does not say): the others are whole
    assert all(np.array_equal(f.image, whole[i]) for i, f in enumerate(got[:-1]))


def test_a_corrupt_frame_is_named(runtime, avi, videos):
    data = bytearray(avi.read_bytes())
    start = [m.start() for m in re.finditer(b"\xff\xd8\xff", data)][12]  # the JPEG of frame 12
    data[start + 2: start + 300] = bytes(298)
    path = videos / "corrupt.avi"
    path.write_bytes(bytes(data))
    got = []
    with pytest.raises(RadaError, match="frame 12 of .*corrupt.avi is corrupt"):
        for frame in runtime.stream(path):
            got.append(frame.index)
    assert got == list(range(12))


def test_bad_sources_and_options_are_refused_clearly(runtime, videos, monkeypatch):
    with pytest.raises(RadaError, match="missing.avi does not exist") as err:
        runtime.stream(videos / "missing.avi")  # at once, before any iteration
    assert err.value.field == "source"
    garbage = videos / "garbage.avi"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(RadaError, match="cannot read video file .*garbage.avi"):
        next(runtime.stream(garbage))
    with pytest.raises(RadaError, match="does not open") as err:
        next(runtime.stream("rtsp://admin:hunter2@127.0.0.1:9/live", timeout_s=2))
    assert "hunter2" not in str(err.value) and "rtsp://***@127.0.0.1:9/live" in str(err.value)
    for kwargs, field in [({"stride": 0}, "stride"), ({"max_frames": 0}, "max_frames"), ({"timeout_s": 0}, "timeout_s"),
                          ({"stride": 1.5}, "stride"), ({"adapt": True}, "adapt"), ({"live": "yes"}, "live")]:
        with pytest.raises(RadaError) as err:
            runtime.stream(videos / "clip.avi", **kwargs)
        assert err.value.field == field, kwargs
    with pytest.raises(RadaError, match="source must be"):
        runtime.stream(3.5)
    monkeypatch.setitem(sys.modules, "cv2", None)  # an install without the video extra
    with pytest.raises(RadaError, match=r"rada-export\[video\]"):
        next(runtime.stream(videos / "clip.avi"))


def test_a_pipeline_without_gstreamer_says_so(runtime):
    if re.search(r"GStreamer:\s*YES", cv2.getBuildInformation()):
        pytest.skip("this OpenCV has GStreamer")
    with pytest.raises(RadaError, match="built without GStreamer"):
        next(runtime.stream("videotestsrc ! videoconvert ! appsink"))


# -- live sources, stalls, and the decode thread's end -------------------------------------------------


def test_live_source_keeps_the_newest_frame_and_counts_drops(runtime, avi):
    """A real capture of the file, read as a live source (as fast as it decodes) by a slow consumer."""
    stream = runtime.stream(avi, live=True)
    got = []
    for frame in stream:
        time.sleep(0.03)
        got.append(frame)
    indices = [f.index for f in got]
    assert indices == sorted(set(indices)) and indices[-1] == FRAMES - 1  # the newest always wins
    assert stream.read == FRAMES and stream.dropped == FRAMES - len(got) > 0
    assert [f.dropped for f in got] == sorted(f.dropped for f in got)
    images = decoded(avi)
    assert all(np.array_equal(f.image, images[f.index]) for f in got)


class PacedSource:
    """A camera-like source: ``read()`` as cv2.VideoCapture, one frame every ``period_s``; it can hang."""

    def __init__(self, frames: list[np.ndarray], period_s: float = 0.005, hang_at: int | None = None, hang_s: float = 0.0):
        self.frames, self.period_s, self.hang_at, self.hang_s = frames, period_s, hang_at, hang_s
        self.position = 0

    def read(self):
        if self.position == self.hang_at:
            time.sleep(self.hang_s)
        time.sleep(self.period_s)
        if self.position >= len(self.frames):
            return False, None
        self.position += 1
        return True, self.frames[self.position - 1]


def test_live_object_source_timestamps_on_the_monotonic_clock(runtime, avi):
    source = PacedSource(decoded(avi), period_s=0.005)
    got = []
    for frame in runtime.stream(source):  # no frame count: live
        time.sleep(0.02)
        got.append(frame)
    assert got[-1].index == FRAMES - 1 and got[-1].dropped == FRAMES - len(got) > 0
    # each read sleeps 5 ms: the stamps of two frames are at least the reads between them apart
    for a, b in zip(got, got[1:]):
        assert b.timestamp_ms - a.timestamp_ms >= 5 * (b.index - a.index) - 1, (a.index, b.index)


def test_a_stalled_source_times_out(runtime, avi):
    source = PacedSource(decoded(avi), hang_at=3, hang_s=1.0)
    got = []
    start = time.monotonic()
    with pytest.raises(RadaError, match=r"gave no frame for 0.3 s \(a read is blocked") as err:
        for frame in runtime.stream(source, timeout_s=0.3, live=False):
            got.append(frame.index)
    assert got == [0, 1, 2] and err.value.field == "timeout_s"
    assert time.monotonic() - start < 3


def test_stopping_early_ends_the_decode_thread(runtime, avi):
    stream = runtime.stream(avi)
    assert not decode_threads()  # nothing opens before the first frame is asked for
    next(stream)
    assert len(decode_threads()) == 1
    stream.close()
    assert not decode_threads()
    for frame in runtime.stream(avi):  # leaving a for loop: the stream goes with the loop's reference
        break
    del frame
    assert not decode_threads()
    with runtime.stream(avi, stride=2) as stream:
        next(stream)
    assert not decode_threads()
    list(runtime.stream(avi, max_frames=2))
    assert not decode_threads()


# -- the command line ------------------------------------------------------------------------------------


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_cli_prints_one_json_line_per_frame(runtime, bundle, avi):
    result = runner.invoke(app, ["predict", "--bundle", str(bundle), "--source", str(avi), "--json"])
    assert result.exit_code == 0, result.output
    lines = json_lines(result.stdout)
    assert [l["frame"] for l in lines] == list(range(FRAMES))
    assert all(b["timestamp_ms"] > a["timestamp_ms"] for a, b in zip(lines, lines[1:]))
    want = [runtime.predict(image, bgr=True) for image in decoded(avi)]
    assert [l["label"] for l in lines] == [int(w.labels[0]) for w in want]
    assert [l["class"] for l in lines] == [w.class_names[0] for w in want]
    assert all(len(l["top"]) == 3 and l["top"][0]["class"] == l["class"] for l in lines)
    result = runner.invoke(app, ["predict", "--bundle", str(bundle), "--source", str(avi), "--json", "--stride", "5",
                                 "--max-frames", "4", "--tta", "continual"])
    lines = json_lines(result.stdout)
    assert [l["frame"] for l in lines] == [0, 5, 10, 15] and [l["tta"]["frames"] for l in lines] == [1, 2, 3, 4]


def test_cli_bad_sources_exit_2_with_one_error_line(bundle, avi, videos):
    result = runner.invoke(app, ["predict", "--bundle", str(bundle), "--source", str(videos / "nope.avi")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert errors == [f"error: --source: video file {videos / 'nope.avi'} does not exist"], result.stderr
    result = runner.invoke(app, ["predict", "--bundle", str(bundle), "--source", str(videos / "nope.avi"), "--json"])
    assert result.exit_code == 2 and len(result.stdout.splitlines()) == 1  # the error as one compact JSON line
    assert json.loads(result.stdout) == {"error": f"--source: video file {videos / 'nope.avi'} does not exist",
                                         "fix": json.loads(result.stdout)["fix"], "exit_code": 2}
    data = avi.read_bytes()
    (videos / "cut.avi").write_bytes(data[: len(data) // 2])
    result = runner.invoke(app, ["predict", "--bundle", str(bundle), "--source", str(videos / "cut.avi"), "--json"])
    assert result.exit_code == 2
    lines = json_lines(result.stdout)  # every line parses, the error's too
    assert "truncated" in lines[-1]["error"] and lines[-1]["exit_code"] == 2
    assert [l["frame"] for l in lines[:-1]] == list(range(len(lines) - 1)) and len(lines) > 5
    result = runner.invoke(app, ["predict", "--bundle", str(bundle), "--source", str(avi), str(avi)])
    assert result.exit_code == 2 and "image paths and --source were both given" in result.stderr
    result = runner.invoke(app, ["predict", "--bundle", str(bundle), str(avi), "--stride", "2"])
    assert result.exit_code == 2 and "--stride applies only to a stream" in result.stderr
    result = runner.invoke(app, ["predict", "--bundle", str(bundle), "--source", str(avi), "--stride", "0"])
    assert result.exit_code == 2 and "--stride must be at least 1" in result.stderr


def test_cli_saves_the_labelled_video_and_the_adapted_state(bundle, avi, tmp_path):
    video, state = tmp_path / "out" / "labelled.avi", tmp_path / "head.npz"
    result = runner.invoke(app, ["predict", "--bundle", str(bundle), "--source", str(avi), "--max-frames", "5",
                                 "--tta", "continual", "--save", str(video), "--save-state", str(state)])
    assert result.exit_code == 0, result.output
    assert "5 frames classified" in result.stdout and f"wrote {video}" in result.stdout
    written = decoded(video)
    assert len(written) == 5 and written[0].shape == (96, 128, 3)
    assert sorted(p.name for p in video.parent.iterdir()) == ["labelled.avi"]  # no partial file left
    adapted = load_bundle(bundle, backend="onnxruntime", device="cpu", tta=TTAConfig(mode="continual"))
    adapted.load_state(dict(np.load(state)))
    assert adapted.head.counters.frames == 5
    result = runner.invoke(app, ["predict", "--bundle", str(bundle), "--source", str(avi), "--save-state", str(state)])
    assert result.exit_code == 2 and "--save-state writes the adapted head" in result.stderr


def test_cli_never_replaces_a_users_file_unasked(bundle, avi, tmp_path):
    """An existing --save or --save-state file is the user's: refused before any frame (exit 2, bytes
    unchanged) unless --force."""
    mine = {tmp_path / "mine.avi": b"my own video", tmp_path / "mine.npz": b"my own state"}
    for path, content in mine.items():
        path.write_bytes(content)
    for flag, path in (("--save", tmp_path / "mine.avi"), ("--save-state", tmp_path / "mine.npz")):
        args = ["predict", "--bundle", str(bundle), "--source", str(avi), "--max-frames", "2", "--tta", "continual", flag, str(path)]
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "already exists" in result.stderr and "--force" in result.stderr, result.output
        assert path.read_bytes() == mine[path]
        result = runner.invoke(app, [*args, "--force"])
        assert result.exit_code == 0, result.output
        assert path.read_bytes() != mine[path]
    result = runner.invoke(app, ["predict", "--bundle", str(bundle), str(avi), "--force"])
    assert result.exit_code == 2 and "applies only to a stream" in result.stderr


def _ctrl_c_as_in_a_terminal() -> None:
    """A child inherits its parent's ignored and blocked signals; under a full test session SIGINT can
    arrive ignored or blocked (as in a shell's background job), which is not what a user at a terminal has."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_cli_ctrl_c_ends_with_a_summary(bundle, videos):
    # Long enough that a loaded machine cannot finish it between the first line and the signal.
    path = write_video(videos / "long.avi", "MJPG", n=6000, width=64, height=48)
    process = subprocess.Popen([sys.executable, "-m", "rada_export.cli.app", "predict", "--bundle", str(bundle),
                                "--source", str(path), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=_ctrl_c_as_in_a_terminal)
    first = process.stdout.readline()  # the stream runs
    process.send_signal(signal.SIGINT)
    out, err = process.stdout.read(), process.stderr.read()  # through the pipes' buffers: no line lost
    assert process.wait(60) == 0, err
    lines = json_lines(first + out)
    assert "stopped by Ctrl-C" in err and "Traceback" not in err
    assert 1 <= len(lines) < 6000 and [l["frame"] for l in lines] == list(range(len(lines)))


# -- the benchmark -----------------------------------------------------------------------------------------


def test_bench_source(bundle, avi):
    from rada_export.bench_stream import run_stream_bench

    r = run_stream_bench(bundle, avi, max_frames=20, passes=1)
    assert r.frames == 20 and (r.width, r.height) == (128, 96)
    assert min(r.decode_fps, r.inference_fps, r.serial_fps, r.overlapped_fps) > 0
    assert abs(r.gain - r.overlapped_fps / r.serial_fps) < 1e-9 and 0 < r.decode_share < 1
    result = runner.invoke(app, ["bench", "--bundle", str(bundle), "--source", str(avi), "--max-frames", "10", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["stream"]["frames"] == 10
    # bench's name for ONNX Runtime on whatever device it has, as its other modes take it
    result = runner.invoke(app, ["bench", "--bundle", str(bundle), "--source", str(avi), "--max-frames", "5", "--json",
                                 "--backend", "onnxruntime"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["stream"]["backend"].startswith("onnxruntime")
    result = runner.invoke(app, ["bench", "--bundle", str(bundle), "--source", "0"])
    assert result.exit_code == 2 and "--source" in result.stderr and "camera" in result.stderr


def test_onnx_runtime_workers_stop_spinning_when_a_run_returns(bundle):
    """The stream's decoder (and a camera app's other threads) get the cores between runs: ONNX
    Runtime's idle workers would otherwise spin there (benchmarks: 1.06x vs 1.61x overlap gain)."""
    from rada_export.runtimes.ort_session import STOP_SPINNING_BETWEEN_RUNS

    rt = load_bundle(bundle, backend="onnxruntime", device="cpu")
    key, value = STOP_SPINNING_BETWEEN_RUNS
    assert key == "session.force_spinning_stop" and value == "1"
    assert rt.fused_runner().session.get_session_options().get_session_config_entry(key) == value


def test_the_runtime_imports_no_opencv_until_a_stream_opens():
    code = "import sys, rada_export.runtimes.runtime, rada_export.runtimes.stream; print('cv2' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr
