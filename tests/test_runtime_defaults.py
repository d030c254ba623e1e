"""What a runtime does by default, and the controls a shared device needs: precision ``auto`` takes
the best engine per graph; ``threads=``, ``device="cuda:N"``; ``runtime.stats`` says what adaptation
did. Engines here are descriptions and placeholder files: nothing runs them, so the checks are the
selection ``load_bundle`` makes and what it says, on a device where TensorRT reports this GPU."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from rada_export import RadaError
from rada_export.runtimes import TTAConfig, load_bundle
from rada_export.runtimes import engine_layout as layout
from rada_export.runtimes import trt_environment as trtenv
from rada_export.runtimes.bundle.manifest import read_manifest
from rada_export.runtimes.runtime_stats import RuntimeStats

CLASSES = ["cat", "dog", "bird"]
HERE = layout.EngineEnvironment("10.3.0.30", "Orin", "8.7")


@pytest.fixture
def bundle(shared_tiny_bundle, tmp_path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(shared_tiny_bundle(classes=CLASSES, fp16=True, verify=False), copy)
    return copy


def write_engine(bundle: Path, graph: str, precision: str, passed: bool | None = True) -> str:
    """An engine placeholder and its description, laid out as `rada-export trt` writes them."""
    manifest = read_manifest(bundle)
    key = manifest.graph_key(graph, precision)
    onnx_file = manifest.graphs[key].file if key in manifest.graphs else manifest.graphs[graph].file
    path = bundle / "engines" / HERE.dir_name / layout.engine_file_name(graph, precision)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"engine bytes")
    meta = {"tensorrt_version": HERE.tensorrt_version, "gpu_name": HERE.gpu_name, "compute_capability": HERE.compute_capability,
            "graph": graph, "precision": precision, "onnx_file": onnx_file, "onnx_sha256": manifest.files[onnx_file],
            "verification": {"passed": passed}}
    layout.meta_path(path).write_text(json.dumps(meta))
    return path.relative_to(bundle).as_posix()


@pytest.fixture
def this_gpu(monkeypatch):
    """TensorRT reports the GPU the engines were built for (the detection alone; no engine is run)."""
    monkeypatch.setattr(trtenv, "current_engine_environment", lambda: HERE)


def test_auto_takes_the_best_engine_per_graph(bundle, this_gpu):
    int8 = write_engine(bundle, "model", "int8")  # parity passed: auto's first choice
    write_engine(bundle, "model", "fp16")
    fp16_encoder = write_engine(bundle, "image_encoder", "fp16")
    rt = load_bundle(bundle)  # every default: backend, device and precision "auto"
    assert rt.backend == "tensorrt+onnxruntime-cpu"
    assert rt.precisions == {"model": "int8", "image_encoder": "fp16", "text_encoder": "fp32"}
    assert rt.precision == "int8" and rt.requested_precision == "auto" and rt.precision_note == ""
    assert f"model: TensorRT int8 ({int8})" in rt.description and f"image_encoder: TensorRT fp16 ({fp16_encoder})" in rt.description
    assert "text_encoder, head: ONNX Runtime CPU" in rt.description

    # An INT8 engine whose parity was not checked is not auto's: the FP16 one serves
    write_engine(bundle, "model", "int8", passed=None)
    rt = load_bundle(bundle)
    assert rt.precisions["model"] == "fp16" and rt.precision == "fp16"
    # An explicit precision asks for that engine
    assert load_bundle(bundle, precision="fp16").precisions["model"] == "fp16"


def test_auto_without_engines_runs_fp32_on_onnxruntime(bundle, this_gpu):
    rt = load_bundle(bundle)
    assert rt.backend.startswith("onnxruntime") or rt.backend == "openvino"
    assert rt.precisions == {"model": "fp32", "image_encoder": "fp32", "text_encoder": "fp32"} and rt.precision == "fp32"


def test_without_tensorrt_engines_are_left_unused_and_said(bundle):
    write_engine(bundle, "model", "fp16")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rt = load_bundle(bundle, backend="auto", device="auto")
    assert rt.precision == "fp32" and not rt.backend.startswith("tensorrt")
    assert any("TensorRT not used" in str(w.message) for w in caught)


def test_threads_and_cuda_device_are_validated_and_applied(bundle):
    rt = load_bundle(bundle, backend="onnxruntime", device="cpu", threads=1)
    assert rt.fused_runner().session.get_session_options().intra_op_num_threads == 1
    assert "1 threads" in rt.description
    assert load_bundle(bundle, backend="onnxruntime", device="cpu").fused_runner().session.get_session_options() \
        .intra_op_num_threads == 0  # None: ONNX Runtime's default
    for bad in (0, -1, 2.5, True, "4", 5000):
        with pytest.raises(RadaError, match="threads must be a whole number") as err:
            load_bundle(bundle, backend="onnxruntime", device="cpu", threads=bad)
        assert err.value.field == "threads"
    for bad in ("cuda:", "cuda:x", "gpu", "cuda:-1", "CUDA:0"):
        with pytest.raises(RadaError, match="unknown device") as err:
            load_bundle(bundle, backend="onnxruntime", device=bad)
        assert err.value.field == "device" and "cuda:N" in err.value.fix
    with pytest.raises(RadaError, match="TensorRT backend runs on GPU 0 only"):
        load_bundle(bundle, backend="tensorrt", device="cuda:1")


def test_cuda_device_reaches_onnxruntime_where_cuda_is(bundle):
    from rada_export.runtimes.ort_session import available_providers

    if "CUDAExecutionProvider" not in available_providers():
        with pytest.raises(RadaError, match="no CUDA execution provider"):
            load_bundle(bundle, backend="onnxruntime", device="cuda:0")
        return
    rt = load_bundle(bundle, backend="onnxruntime", device="cuda:0")
    assert rt.fused_runner().session.get_provider_options()["CUDAExecutionProvider"]["device_id"] == "0"


def test_stats_count_frames_updates_and_skips(bundle):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(6)]
    plain = load_bundle(bundle, backend="onnxruntime", device="cpu")
    assert plain.stats == RuntimeStats(0, 0, 0, 0, 0, "off")
    plain.predict(frames[:2])
    plain.predict(frames[2])
    assert plain.stats.frames == 3 and plain.stats.updates == 0 and plain.stats.mode == "off"

    # Nothing is confident enough to learn from (e_margin near 0): every frame skipped, and said
    unsure = load_bundle(bundle, backend="onnxruntime", device="cpu", tta=TTAConfig(mode="continual", e_margin=1e-6))
    unsure.predict(frames, adapt=True)
    stats = unsure.stats
    assert (stats.frames, stats.updates, stats.skipped_unconfident, stats.mode) == (6, 0, 6, "continual")
    assert stats.to_dict() == {"frames": 6, "updates": 0, "skipped_unconfident": 6, "skipped_nonfinite": 0, "resets": 0,
                               "mode": "continual", "adapted_frames": 6, "episodes": 0}
    with pytest.raises(Exception):
        stats.frames = 1  # a snapshot, frozen

    learning = load_bundle(bundle, backend="onnxruntime", device="cpu", tta=TTAConfig(mode="continual", e_margin=1.0,
                                                                                        continual_batch=2))
    for frame in frames:  # a camera loop: one frame a call
        learning.predict(frame, adapt=True)
    assert learning.stats.updates == 3 and learning.stats.skipped_unconfident == 0  # 6 confident frames, 2 a step
    learning.reset()
    assert learning.stats.frames == 6  # kept across reset(): they describe the run
