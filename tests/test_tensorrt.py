"""TensorRT engines: building, loading, refusing foreign engines, and the `rada-export trt` command.

What is tested where:

- The build / load / run path (TensorRT building an engine, parity against ONNX Runtime, running
  it with device buffers, the timing cache, refusing a real engine from another version or GPU) is
  tested only where TensorRT and an NVIDIA GPU exist: the ``@pytest.mark.tensorrt`` tests at the
  end. Everywhere else they are skipped, and ``-rs`` / ``-ra`` prints the reason (what is missing).
  Nothing here stands in for TensorRT or the CUDA runtime.
- CPU tests (run everywhere) cover everything before TensorRT: input validation and the CLI's
  exit-2 errors, checksum and operator checks (engine selection and batch splitting: test_engine_selection.py), and the environment checks against what is really installed here (``tensorrt`` made unimportable
  with ``sys.modules[...] = None`` where a test needs it missing; the real libcudart, if
  installed, without a GPU).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rada_export.errors import RadaError
from rada_export.runtimes import cuda_memory as cm
from rada_export.runtimes import trt_environment as trtenv
from rada_export.runtimes.tensorrt_engine import TensorRTEngine, numpy_dtype, numpy_dtype_of
from rada_export.runtimes.trt_logging import LogRouter, shared_logger
from rada_export.runtimes.manifest import read_manifest, sha256_file, write_manifest

from conftest import calibrate_for_tests
from trt_cli import run_trt_without_tensorrt

CLASSES = ["cat", "dog", "bird"]


# ---------------------------------------------------------------------------------------------
# Bundles


def _export(out: Path, model: str = "rada-tiny-ViT"):
    pytest.importorskip("open_clip")
    from rada_export.export.bundle import ExportRequest, export_bundle

    export_bundle(ExportRequest(out=out, model=model, pretrained="none", classes=CLASSES, fp16=True))
    return out


@pytest.fixture(scope="module")
def tiny_bundle(shared_tiny_bundle) -> Path:
    return shared_tiny_bundle(classes=CLASSES, fp16=True)


@pytest.fixture
def bundle(tiny_bundle, tmp_path) -> Path:
    """A private copy of the tiny bundle (tests write engines into it or damage it)."""
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    return copy


# ---------------------------------------------------------------------------------------------
# Environment checks, against what is really installed here


def _real_cudart_without_gpu():
    """The real libcudart (through ctypes) on a machine without a usable GPU/driver, or a skip saying why not."""
    try:
        cudart = cm.load_cudart()
    except RadaError as err:
        pytest.skip(f"needs a CUDA runtime library (libcudart) on a machine without a GPU: {err.problem}")
    count, _ = cm.gpu_count(cudart)
    if count:
        pytest.skip("needs libcudart on a machine without a GPU; this machine has a GPU")
    return cudart


def test_missing_tensorrt_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    missing, env = trtenv.diagnose_environment()
    assert env is None and missing[0].component == "TensorRT"
    with pytest.raises(RadaError) as err:
        trtenv.import_tensorrt()
    assert "`tensorrt` is not installed" in err.value.problem
    err = trtenv.environment_error(missing)
    assert "tensorrt" in err.problem and "rada-export[trt-cu12]" in err.fix and "python3-libnvinfer" in err.fix


def test_on_a_jetson_the_missing_tensorrt_advice_fits_what_jetpack_installed(tmp_path):
    """JetPack installs TensorRT into the system Python: a venv without system site packages is the usual cause."""
    marker = tmp_path / "nv_tegra_release"
    system = tmp_path / "usr/lib/python3.10/dist-packages"
    (system / "tensorrt").mkdir(parents=True)
    assert trtenv.jetpack_tensorrt_fix((str(tmp_path / "absent"),), (str(system),)) is None  # not a Jetson: the extras
    marker.write_text("# R36 (release), REVISION: 4.0")
    fix = trtenv.jetpack_tensorrt_fix((str(marker),), (str(system),))
    assert f"JetPack's TensorRT is installed ({system}/tensorrt)" in fix and "python3 -m venv --system-site-packages" in fix
    assert "apt install" not in fix and "pip install 'rada-export[trt" not in fix  # never: install what is installed
    fix = trtenv.jetpack_tensorrt_fix((str(marker),), (str(tmp_path / "nowhere"),))
    assert "sudo apt install python3-libnvinfer" in fix and "--system-site-packages" in fix


class _OldTensorRT:
    __version__ = "8.6.2.3"


def test_jetpack_6_0_tensorrt_8_6_is_refused_clearly():
    with pytest.raises(RadaError) as err:
        trtenv.import_tensorrt(lambda name: _OldTensorRT())
    assert "8.6.2.3 is too old" in err.value.problem and "JetPack 6.0 ships TensorRT 8.6" in err.value.problem
    assert "JetPack 6.1 or 6.2 (TensorRT 10.3)" in err.value.fix


def test_missing_tensorrt_and_cuda_runtime_are_each_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    missing, env = trtenv.diagnose_environment(load_cudart=lambda prefer_major: cm.load_cudart(["/no/such/libcudart.so.12"]))
    assert env is None and [m.component for m in missing] == ["TensorRT", "CUDA runtime"]
    err = trtenv.environment_error(missing)
    assert "missing TensorRT, CUDA runtime" in err.problem and "/no/such/libcudart.so.12" in err.problem
    assert "rada-export[trt-cu12]" in err.fix and "JetPack" in err.fix


def test_missing_tensorrt_and_driver_are_each_named(monkeypatch):
    _real_cudart_without_gpu()
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    missing, env = trtenv.diagnose_environment()
    assert env is None and [m.component for m in missing] == ["TensorRT", "NVIDIA driver"]
    err = trtenv.environment_error(missing)
    assert "NVIDIA driver" in err.problem and "nvidia-smi" in err.fix


def test_a_driver_too_old_for_the_tensorrt_wheel_names_the_extra_that_fits():
    # Pure functions of the driver's CUDA version and TensorRT's CUDA major (the wheels' names).
    assert cm.diagnose_driver(13000, 13, "TensorRT 11.4") is None
    assert cm.diagnose_driver(12080, 12, "TensorRT 10.13") is None
    problem = cm.diagnose_driver(12040, 13, "TensorRT 11.4")
    assert "supports CUDA up to 12.4" in problem and "CUDA 13" in problem and "580.65.06" in problem
    assert "rada-export[trt-cu12]" in cm.driver_fix(12040) and "tensorrt-cu13" in cm.driver_fix(12040)
    assert "525.60.13" in cm.driver_fix(11080)
    assert "no NVIDIA driver" in cm.diagnose_driver(0, 12, "TensorRT")
    versions = {"tensorrt-cu13-libs": "11.4.0.106"}
    assert trtenv.tensorrt_cuda_major(lambda n: versions.get(n, "")) == 13
    assert trtenv.tensorrt_cuda_major(lambda n: {"tensorrt_cu12_libs": "10.3.0"}.get(n, "")) == 12
    assert trtenv.tensorrt_cuda_major(lambda n: "") is None  # JetPack's apt TensorRT: no wheel


def test_real_libcudart_without_a_gpu_reports_the_driver():
    cudart = _real_cudart_without_gpu()
    assert cudart.runtime_version() >= 12000, cudart.path
    with pytest.raises(RadaError) as err:
        cm.require_gpu(cudart)
    # CUDA's own error name, through cudaGetErrorName with a declared prototype (no truncated pointers)
    assert "cudaGetDeviceCount" in err.value.problem and "cudaError" in err.value.problem and "driver" in err.value.fix
    with pytest.raises(cm.CudaError) as err:
        cudart.malloc(1024)
    assert "cudaMalloc" in err.value.problem


def test_libcudart_candidates_cover_wheels_jetpack_and_the_loader(tmp_path):
    wheel = tmp_path / "nvidia" / "cuda_runtime" / "lib"
    wheel.mkdir(parents=True)
    (wheel / "libcudart.so.12").write_bytes(b"")
    found = cm.candidate_libraries([str(tmp_path)])
    assert found[0] == str(wheel / "libcudart.so.12")
    assert found[-3:] == ["libcudart.so.13", "libcudart.so.12", "libcudart.so"]
    with pytest.raises(RadaError) as err:
        cm.load_cudart([str(wheel / "libcudart.so.12")])  # an empty file does not load
    assert "libcudart" in err.value.problem and "trt-cu12" in err.value.fix


def test_runtime_and_engine_building_import_no_torch():
    code = ("import sys; import rada_export.runtimes.tensorrt_engine, rada_export.runtimes.engine_selection, "
            "rada_export.runtimes.batch_chunks, rada_export.runtimes.cuda_memory, rada_export.tensorrt; "
            "bad = [m for m in ('torch', 'open_clip', 'tensorrt', 'rada_export.export') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------
# Input validation (before TensorRT is imported) and the CLI contract


@pytest.mark.parametrize("args, messages", [
    (["--min-batch", "4", "--opt-batch", "2"], ["1 <= min <= opt <= max", "fix: pass e.g. --min-batch 1, --opt-batch 8, --max-batch 32"]),
    (["--opt-batch", "16", "--max-batch", "8"], ["min 1, opt 16, max 8"]),
    (["--min-batch", "0"], ["error: --min-batch must be at least 1, got 0", "fix: pass --min-batch 1"]),
    (["--max-classes", "0"], ["error: --max-classes must be at least 1, got 0", "fix: pass e.g. --max-classes 256"]),
    (["--precision", "fp8"], ["error: --precision 'fp8' is unknown", "use --precision fp16, --precision int8 or --precision fp32"]),
    (["--graph", "vision"], ["error: --graph 'vision' is unknown",
                             "use --graph all, or one or more (comma-separated) of --graph model, --graph image_encoder"]),
    (["--graph", "all,model"], ["error: --graph 'all' cannot be combined with graph names"]),
    (["--graph", "head", "--precision", "fp16"],
     ["error: --precision: the bundle has no FP16 head graph", "FP16 variants are made for",
      "fix: build head with --precision fp32 (it is small), or build --graph model or --graph image_encoder"]),
    (["--precision", "int8"], ["rada-export calibrate", "or pass --images DIR, a folder of images, to calibrate on the way"]),
    (["--gpu-fallback"], ["error: --gpu-fallback only applies to a DLA build (--dla-core N)", "fix: pass --dla-core 0 to build"]),
    (["--workspace", "0"], ["error: --workspace must be a positive number of GB, got 0.0", "fix: pass e.g. --workspace 2"]),
    (["--precision", "int8", "--images", "/no/such/dir"], ["error: --images /no/such/dir is not a folder"]),
    (["--precision", "fp16", "--images", "."],
     ["error: --images only applies to --precision int8, got --precision fp16", "fix: pass --precision int8 to calibrate"]),
    (["--timing-cache", "/no/such/dir/trt.cache"], ["error: --timing-cache /no/such/dir/trt.cache is in a folder that does not exist"]),
])
def test_bad_input_exits_2_before_tensorrt(bundle, monkeypatch, args, messages):
    code, out = run_trt_without_tensorrt(["--bundle", bundle, *args], monkeypatch)
    flat = " ".join(out.split())
    assert code == 2, out
    for message in messages:
        assert message in flat, out
    assert "tensorrt` is not installed" not in out
    fields = ("min_batch", "opt_batch", "max_batch", "max_classes", "workspace_gb", "calib_images", "timing_cache", "dla_core",
              "gpu_fallback", "precision=", "graph=")
    assert not [f for f in fields if f in flat], out  # the CLI shows its flags, not the request's fields


@pytest.mark.parametrize("request_fields, field, problem, fix", [
    ({"min_batch": 0}, "min_batch", "min_batch must be at least 1, got 0", "pass min_batch=1"),
    ({"workspace_gb": -1}, "workspace_gb", "workspace_gb must be a positive number of GB, got -1", "pass e.g. workspace_gb=2, or leave it to TensorRT"),
    ({"graph": "vision"}, "graph", "graph 'vision' is unknown", "use graph='model', graph='image_encoder', graph='text_encoder' or graph='head'"),
    ({"gpu_fallback": True}, "gpu_fallback", "gpu_fallback=True only applies to a DLA build (dla_core=N)", None),
    ({"dla_core": -1}, "dla_core", "dla_core must be 0 or more, got -1", "pass dla_core=0 (or 1 on AGX Orin)"),
    ({"min_batch": 2.5}, "min_batch", "min_batch must be a whole number, got 2.5", "pass e.g. min_batch=8"),
])
def test_plan_errors_name_request_fields_not_flags(bundle, request_fields, field, problem, fix):
    from rada_export.tensorrt.plan import BuildRequest, plan_build

    with pytest.raises(RadaError) as err:
        plan_build(BuildRequest(bundle, **request_fields), jetson=lambda: True)
    assert err.value.field == field and err.value.problem == problem
    assert fix is None or err.value.fix == fix
    assert "--" not in str(err.value), str(err.value)


def test_dla_needs_a_jetson_and_fp16_or_int8(bundle, monkeypatch):
    from rada_export.tensorrt import plan as planning

    monkeypatch.setattr(planning, "is_jetson", lambda: False)
    code, out = run_trt_without_tensorrt(["--bundle", bundle, "--dla-core", "0"], monkeypatch)
    assert code == 2 and "error: --dla-core 0 needs a Jetson" in out, out
    monkeypatch.setattr(planning, "is_jetson", lambda: True)
    code, out = run_trt_without_tensorrt(["--bundle", bundle, "--dla-core", "0", "--precision", "fp32"], monkeypatch)
    assert code == 2 and "FP16 and INT8 only" in out and "fix: pass --precision fp16 or --precision int8 for a DLA build" in out, out
    code, out = run_trt_without_tensorrt(["--bundle", bundle, "--dla-core", "0", "--min-batch", "1", "--max-batch", "8"], monkeypatch)
    assert code == 2 and "fixed batch" in out and "--min-batch 1, --opt-batch 1, --max-batch 1" in " ".join(out.split()), out
    plan = planning.plan_build(planning.BuildRequest(bundle, dla_core=0, gpu_fallback=True))
    assert set(plan.ranges.values()) == {(1, 1, 1), (3, 3, 3)}


def test_build_notes_name_fields_and_the_cli_shows_its_flags(bundle):
    from rada_export.cli.flags import CommandFlags
    from rada_export.cli.trt import FIELDS, trt
    from rada_export.tensorrt.plan import BuildRequest, plan_build

    plan = plan_build(BuildRequest(bundle, dla_core=0, gpu_fallback=True), jetson=lambda: True)
    assert plan.notes == ["DLA: fixed batch 1 (pass min_batch=N, opt_batch=N and max_batch=N to change it)"]
    flags = CommandFlags(trt, FIELDS)
    assert flags.text(plan.notes[0]) == "DLA: fixed batch 1 (pass --min-batch N, --opt-batch N and --max-batch N to change it)"
    assert flags.text("parity not checked (verify=False)") == "parity not checked (--no-verify)"


def test_missing_bundle_corrupt_onnx_and_unwritable_engines_exit_2(bundle, tmp_path, monkeypatch):
    code, out = run_trt_without_tensorrt(["--bundle", tmp_path / "nothing"], monkeypatch)
    assert code == 2 and "does not exist" in out

    data = (bundle / "model.fp16.onnx").read_bytes()
    (bundle / "model.fp16.onnx").write_bytes(data[: len(data) // 2])
    code, out = run_trt_without_tensorrt(["--bundle", bundle], monkeypatch)
    assert code == 2 and "checksum mismatch" in out and "model.fp16.onnx" in out
    (bundle / "model.fp16.onnx").write_bytes(data)

    (bundle / "engines").write_text("not a folder")
    code, out = run_trt_without_tensorrt(["--bundle", bundle], monkeypatch)
    assert code == 2 and "engines go into a folder" in out


def test_unsupported_operator_is_refused_before_tensorrt(bundle, monkeypatch):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Unique", ["image_features"], ["u"]), helper.make_node("MatMul", ["u", "text_features"], ["logits"])],
        "head", [helper.make_tensor_value_info("image_features", TensorProto.FLOAT, ["batch", 64]),
                 helper.make_tensor_value_info("text_features", TensorProto.FLOAT, ["num_classes", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), bundle / "head.onnx")
    manifest = read_manifest(bundle)
    manifest.files["head.onnx"] = sha256_file(bundle / "head.onnx")
    write_manifest(bundle, manifest)
    code, out = run_trt_without_tensorrt(["--bundle", bundle, "--graph", "head", "--precision", "fp32"], monkeypatch)
    assert code == 2 and "Unique" in out and "cannot parse" in out


def test_missing_tensorrt_exits_2_naming_it(bundle, monkeypatch):
    code, out = run_trt_without_tensorrt(["--bundle", bundle], monkeypatch)
    assert code == 2, out
    flat = " ".join(out.split())
    assert "missing TensorRT" in flat and "pip install 'rada-export[trt-cu12]'" in flat and "python3-libnvinfer" in flat


def test_missing_gpu_exits_2_naming_it(bundle, monkeypatch):
    _real_cudart_without_gpu()
    code, out = run_trt_without_tensorrt(["--bundle", bundle], monkeypatch)
    assert code == 2, out
    flat = " ".join(out.split())
    assert "missing TensorRT, NVIDIA driver" in flat and "nvidia-smi" in flat


def test_every_missing_prerequisite_is_named_at_once_before_building(bundle, monkeypatch):
    # onnxruntime (parity) is checked with the rest, not imported only after a build of many minutes.
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    code, out = run_trt_without_tensorrt(["--bundle", bundle], monkeypatch)
    flat = " ".join(out.split())
    assert code == 2, out
    assert "missing TensorRT" in flat and "onnxruntime" in flat and "--no-verify" in flat
    assert not (bundle / "engines").exists() or not any((bundle / "engines").rglob("*.engine"))
    # --no-verify drops the onnxruntime requirement (and only that one)
    code, out = run_trt_without_tensorrt(["--bundle", bundle, "--no-verify"], monkeypatch)
    assert code == 2 and "onnxruntime" not in " ".join(out.split()).split("missing", 1)[1].split("-")[0]


def test_int8_calibration_and_dla_prerequisites_are_checked_before_building(bundle, tmp_path):
    from rada_export.tensorrt.plan import BuildRequest, plan_build
    from rada_export.tensorrt.preflight import check_prerequisites

    images = tmp_path / "imgs"
    images.mkdir()
    plan = plan_build(BuildRequest(bundle, precision="int8", calib_images=images))
    assert plan.needs_calibration
    with pytest.raises(RadaError) as err:
        check_prerequisites(plan, verify=True, diagnose=lambda: ([trtenv.Missing("TensorRT", "absent", "install it")], None))
    assert "missing TensorRT" in err.value.problem  # calibration code is installed here, so only TensorRT is named


@pytest.mark.parametrize("version, precision, supported, strongly_typed, flags", [
    ("10.3.0.30", "fp16", True, False, ("FP16",)),  # JetPack 6.1/6.2: weakly typed + FP16 flag, as trtexec --fp16
    ("10.3.0.30", "int8", True, False, ("FP16", "INT8")),
    ("10.7.0", "fp16", True, False, ("FP16",)),
    ("10.8.0", "fp16", False, True, ()),  # 10.7 was the last 10.x release with DLA
    ("11.2.1", "fp16", False, True, ()),
    ("11.4.0", "fp16", False, True, ()),
    ("11.4.1", "int8", True, True, ()),  # strongly typed DLA (JetPack 7.2.2+)
])
def test_dla_build_mode_per_tensorrt_release(version, precision, supported, strongly_typed, flags):
    from rada_export.tensorrt.dla import dla_build_mode

    mode = dla_build_mode(version, precision)
    assert (mode.supported, mode.strongly_typed, mode.precision_flags) == (supported, strongly_typed, flags)
    assert version in mode.reason
    # weakly typed (10.x) DLA builds obey precision constraints, the graph's FP32 layers pinned to FP32
    assert mode.pin_fp32_layers == (supported and not strongly_typed)
    assert ("OBEY_PRECISION_CONSTRAINTS" in mode.reason) == mode.pin_fp32_layers


def test_dla_with_int8_is_refused_with_advice_never_run_on_the_gpu_silently(bundle, monkeypatch):
    from rada_export.tensorrt import plan as planning

    calibrated = planning.BuildRequest(bundle, precision="int8", dla_core=0, gpu_fallback=True)
    with pytest.raises(RadaError) as err:
        planning.plan_build(calibrated, jetson=lambda: True)
    assert err.value.field == "dla_core" and "calibration cache" in err.value.problem and "Q/DQ" in err.value.problem
    assert "precision='fp16' with dla_core=N" in err.value.fix and "precision='int8' without a DLA core" in err.value.fix
    assert "--" not in str(err.value)  # the library names fields; the CLI shows its flags
    monkeypatch.setattr(planning, "is_jetson", lambda: True)
    code, out = run_trt_without_tensorrt(["--bundle", bundle, "--precision", "int8", "--dla-core", "0", "--gpu-fallback"], monkeypatch)
    flat = " ".join(out.split())
    assert code == 2 and "error: --dla-core: the DLA on JetPack 6" in flat and "--precision fp16 with --dla-core N" in flat, out


def test_the_cli_names_the_typing_each_engine_was_built_with():
    from rada_export.cli.trt import precision_label

    gpu = {"strongly_typed": True, "tf32": True, "dla_fp32_pinned_layers": None}
    dla = {"strongly_typed": False, "tf32": False, "dla_fp32_pinned_layers": 57}
    assert precision_label("fp16", gpu) == "fp16 (strongly typed, TF32)"
    assert precision_label("fp16", dla) == "fp16 (weakly typed for the DLA, OBEY_PRECISION_CONSTRAINTS: 57 FP32 layers pinned)"


# ---------------------------------------------------------------------------------------------
# Real TensorRT and a real GPU


@pytest.fixture(scope="module")
def trt_env(tmp_path_factory):
    try:
        env = trtenv.require_environment()
    except RadaError as err:
        pytest.skip(f"needs TensorRT and an NVIDIA GPU: {err.problem}")
    # the engines these tests build are recorded in a list of their own, not the user's
    from rada_export.runtimes.engine_layout import TRUSTED_ENGINES_ENV

    mp = pytest.MonkeyPatch()
    mp.setenv(TRUSTED_ENGINES_ENV, str(tmp_path_factory.mktemp("state") / "trusted-engines.txt"))
    yield env
    mp.undo()


def _build_and_check(bundle: Path, precision: str, env, tmp_path: Path):
    from rada_export.tensorrt.build import BuildRequest, build_engine

    if precision == "int8" and "model.int8" not in read_manifest(bundle).graphs:
        calibrate_for_tests(bundle, tmp_path)
    result = build_engine(BuildRequest(bundle, "model", precision, max_batch=8), environment=env)
    assert result.report.passed, result.report.to_dict()
    with TensorRTEngine(result.engine_path, read_manifest(bundle), environment=env) as engine:
        out = engine.run({"pixels": np.zeros((3, 3, *read_manifest(bundle).preprocess.size), np.float32)})
        assert out["logits"].shape == (3, len(CLASSES)) and np.isfinite(out["logits"]).all()
    return result


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_real_engines_for_the_tiny_config(bundle, trt_env, precision, tmp_path):
    _build_and_check(bundle, precision, trt_env, tmp_path)


@pytest.mark.tensorrt
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_real_engines_for_vit_b_32(trt_env, precision, tmp_path):
    bundle = _export(tmp_path / "vitb32", "ViT-B-32")
    _build_and_check(bundle, precision, trt_env, tmp_path)


@pytest.mark.tensorrt
def test_real_timing_cache_makes_the_second_build_faster(bundle, trt_env, tmp_path):
    from rada_export.tensorrt.build import BuildRequest, build_engine

    cache = tmp_path / "timing.cache"
    first = build_engine(BuildRequest(bundle, "model", "fp32", max_batch=32, timing_cache=cache, verify=False), environment=trt_env)
    second = build_engine(BuildRequest(bundle, "model", "fp32", max_batch=32, timing_cache=cache, verify=False), environment=trt_env)
    assert second.meta["build_flags"]["timing_cache_reused"]
    assert second.build_seconds < first.build_seconds, (first.build_seconds, second.build_seconds)


@pytest.mark.tensorrt
def test_real_engine_from_another_version_or_gpu_is_refused(bundle, trt_env):
    from rada_export.tensorrt.build import BuildRequest, build_engine

    result = build_engine(BuildRequest(bundle, "model", "fp16", max_batch=2, verify=False), environment=trt_env)
    original = json.loads(result.meta_path.read_text())
    for change in ({"tensorrt_version": "9.9.9"}, {"gpu_name": "Another GPU", "compute_capability": "1.0"}):
        result.meta_path.write_text(json.dumps({**original, **change}))
        with pytest.raises(RadaError, match="rebuild it on this device"):
            TensorRTEngine(result.engine_path, environment=trt_env)


@pytest.mark.tensorrt
def test_real_engine_is_loaded_only_where_this_device_recorded_it(bundle, trt_env, tmp_path, monkeypatch):
    from rada_export.runtimes.engine_layout import TRUSTED_ENGINES_ENV, is_trusted_engine
    from rada_export.tensorrt.build import BuildRequest, build_engine

    result = build_engine(BuildRequest(bundle, "model", "fp16", max_batch=2, verify=False), environment=trt_env)
    assert is_trusted_engine(result.meta["engine_sha256"])  # the build recorded it
    TensorRTEngine(result.engine_path, environment=trt_env).close()
    monkeypatch.setenv(TRUSTED_ENGINES_ENV, str(tmp_path / "another-device.txt"))  # as on a device that did not build it
    with pytest.raises(RadaError, match="was not built on this device"):
        TensorRTEngine(result.engine_path, environment=trt_env)


@pytest.mark.tensorrt
def test_real_trt_builds_every_runtime_graph_and_ends_with_lines_that_use_them(bundle, trt_env):
    """`trt` (--graph all): engines for predict, test-time adaptation and set_classes, and the lines that use them."""
    from typer.testing import CliRunner

    from trt_cli import _app

    result = CliRunner().invoke(_app(), ["trt", "--bundle", str(bundle), "--precision", "fp16", "--max-batch", "4", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[result.output.index("{"):])
    assert {(e["description"]["graph"], e["description"]["precision"]) for e in data["engines"]} == {
        ("model", "fp16"), ("image_encoder", "fp16"), ("text_encoder", "fp32")}
    assert data["without_engine"] == [] and all(e["description"]["engine_sha256"] for e in data["engines"])
    assert data["load_bundle"] == f"rt = load_bundle({str(bundle)!r}, precision='fp16')"
    from rada_export.runtimes import load_bundle
    from rada_export.runtimes.tta import TTAConfig

    rt = load_bundle(bundle, precision="fp16", tta=TTAConfig(mode="continual"))  # what the printed line does
    assert "TensorRT" in rt.description and "ONNX Runtime" not in rt.description.split(";")[0], rt.description
    image = np.zeros((32, 32, 3), np.uint8)
    rt.predict(image, adapt=True)  # the image_encoder engine
    rt.set_classes(["a cat", "a dog", "a bird"])  # the text_encoder engine
    assert rt.predict(image).logits.shape == (1, 3)


# ---------------------------------------------------------------------------------------------
# Real TensorRT: parity failures, the runtime's choice, batch splitting, DLA (skipped here, with the reason)


@pytest.mark.tensorrt
def test_real_engine_is_kept_when_parity_cannotrun_trt_without_tensorrt(bundle, trt_env, monkeypatch):
    from rada_export.tensorrt import build

    def parity_crashes(*args, **kwargs):
        raise RadaError("ONNX Runtime could not create a session", "reinstall onnxruntime")

    monkeypatch.setattr(build, "verify_engine", parity_crashes)  # failure injection into ONNX Runtime's side only
    result = build.build_engine(build.BuildRequest(bundle, "model", "fp16", max_batch=4), environment=trt_env)
    meta = json.loads(result.meta_path.read_text())
    assert result.engine_path.is_file() and meta["verification"]["status"] == "parity not checked"
    assert "could not create a session" in meta["verification"]["reason"]
    assert any("parity not checked" in w for w in result.warnings)


@pytest.mark.tensorrt
def test_real_runtime_uses_the_default_model_engine_and_onnxruntime_for_the_rest(bundle, trt_env):
    from rada_export.runtimes import load_bundle
    from rada_export.tensorrt.build import BuildRequest, build_engine

    build_engine(BuildRequest(bundle, "model", "fp16", max_batch=4), environment=trt_env)
    rt = load_bundle(bundle, precision="fp16")
    assert rt.backend.startswith("tensorrt+onnxruntime"), rt.description
    assert "model: TensorRT fp16" in rt.description and "text_encoder" in rt.description
    size = read_manifest(bundle).preprocess.size
    frames = np.random.default_rng(0).integers(0, 256, (6, *size, 3), dtype=np.uint8)
    pred = rt.predict(list(frames))  # 6 images through an engine whose profile stops at 4
    assert pred.logits.shape == (6, len(CLASSES)) and np.isfinite(pred.logits).all()
    reference = load_bundle(bundle, backend="onnxruntime", precision="fp32").predict(list(frames))
    cos = (pred.image_features * reference.image_features).sum(1)
    assert cos.min() > 0.99, cos


@pytest.mark.tensorrt
def test_real_engine_splits_batches_above_its_profile(bundle, trt_env):
    from rada_export.tensorrt.build import BuildRequest, build_engine

    result = build_engine(BuildRequest(bundle, "image_encoder", "fp16", max_batch=2, verify=False), environment=trt_env)
    assert result.meta["batch_inputs"] == ["pixels"]
    pixels = np.random.default_rng(1).standard_normal((5, 3, *read_manifest(bundle).preprocess.size)).astype(np.float32)
    with TensorRTEngine(result.engine_path, read_manifest(bundle), environment=trt_env) as engine:
        assert engine.max_batch == 2
        whole = engine.run({"pixels": pixels})["image_features"]
        # the same slices by hand: same shapes, same kernels, so the same numbers, row for row
        by_hand = np.concatenate([engine.run({"pixels": pixels[a:b]})["image_features"] for a, b in ((0, 2), (2, 4), (4, 5))])
    assert whole.shape == by_hand.shape == (5, by_hand.shape[1])
    np.testing.assert_array_equal(whole, by_hand)


def test_tensorrt_log_goes_to_the_call_that_caused_it_across_threads():
    """One logger per process (TensorRT keeps only the first): each call captures its own thread's messages."""
    import threading

    router = LogRouter(keep=3)
    ready, done = threading.Barrier(2), []

    def camera(index: int) -> None:
        with router.capture() as log:
            ready.wait()
            router.record(1, f"error of camera {index}")
            router.record(2, f"warning of camera {index}")
            router.record(3, "info is not kept")
            ready.wait()
            done.append((index, log.errors(), log.warnings()))

    threads = [threading.Thread(target=camera, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(done) == [(0, ["error of camera 0"], ["warning of camera 0"]),
                            (1, ["error of camera 1"], ["warning of camera 1"])]
    with router.capture() as log:
        # a message from a thread with no capture open (TensorRT's own workers) reaches every open capture
        worker = threading.Thread(target=router.record, args=(0, "internal error from a worker"))
        worker.start()
        worker.join()
        assert log.errors() == ["internal error from a worker"]
        for i in range(5):
            router.record(2, f"w{i}")
        assert log.errors() == [] and log.warnings() == ["w2", "w3", "w4"]  # the newest `keep` only
    router.record(1, "after the capture closed")
    assert log.errors() == [] and "after the capture closed" not in str(log.messages)


@pytest.mark.parametrize("name, dtype", [("FLOAT", np.float32), ("DataType.HALF", np.float16), ("INT64", np.int64),
                                         ("DataType.INT32", np.int32), ("UINT8", np.uint8), ("BOOL", np.bool_)])
def test_engine_io_types_map_to_numpy_int64_included(name, dtype):
    assert numpy_dtype_of(name) == np.dtype(dtype)


def test_engine_io_types_numpy_cannot_hold_are_refused_by_name():
    with pytest.raises(RadaError) as err:
        numpy_dtype_of("DataType.BF16")
    assert "type BF16, which numpy cannot hold" in err.value.problem


@pytest.mark.tensorrt
def test_real_tensorrt_types_and_one_logger(trt_env):
    trt = trt_env.trt
    for member, dtype in ((trt.float32, np.float32), (trt.float16, np.float16), (trt.int32, np.int32),
                          (trt.int64, np.int64), (trt.uint8, np.uint8), (trt.bool, np.bool_)):
        assert numpy_dtype(trt, member) == np.dtype(dtype) and np.dtype(dtype).itemsize == member.itemsize
    assert shared_logger(trt) is shared_logger(trt)
    with shared_logger(trt).capture() as log:
        assert trt.Runtime(shared_logger(trt)).deserialize_cuda_engine(b"not an engine" * 64) is None
    assert log.errors(), "TensorRT's reason for refusing the bytes reaches the capture"


@pytest.mark.tensorrt
def test_real_second_engine_runs_and_reports_after_the_first_is_closed(bundle, trt_env):
    """Engines share TensorRT's one logger: closing one must leave the others running and reporting."""
    import gc

    from rada_export.tensorrt.build import BuildRequest, build_engine

    result = build_engine(BuildRequest(bundle, "image_encoder", "fp16", max_batch=2, verify=False), environment=trt_env)
    pixels = np.random.default_rng(2).standard_normal((2, 3, *read_manifest(bundle).preprocess.size)).astype(np.float32)
    first = TensorRTEngine(result.engine_path, read_manifest(bundle), environment=trt_env)
    second = TensorRTEngine(result.engine_path, read_manifest(bundle), environment=trt_env)
    expected = first.run({"pixels": pixels})["image_features"]
    first.close()
    del first
    gc.collect()
    np.testing.assert_array_equal(second.run({"pixels": pixels})["image_features"], expected)
    second.close()


@pytest.mark.tensorrt
def test_real_environment_records_cuda_and_the_driver_fits(trt_env):
    assert trt_env.cudart.driver_version() // 1000 >= trt_env.cudart.major
    assert cm.runtime_version(trt_env.cudart) and trt_env.device.total_memory > 0
    major = trtenv.tensorrt_cuda_major()
    assert major is None or cm.diagnose_driver(trt_env.cudart.driver_version(), major, "TensorRT") is None


@pytest.mark.tensorrt
def test_real_weakly_typed_network_keeps_the_fp16_graphs_fp32_layers_in_fp32(bundle, trt_env):
    """What a DLA build on TensorRT 10.x does to the parsed FP16 graph (runs on any GPU with 10.x)."""
    from rada_export.tensorrt.serialize import pin_fp32_layers

    trt = trt_env.trt
    if getattr(trt.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS", None) is None:
        pytest.skip(f"TensorRT {trt.__version__} has no weakly typed networks (11.x): strong typing does this")
    logger = shared_logger(trt)  # the process's one logger, as the build uses
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # weakly typed, as for the DLA on 10.x
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(bundle / "model.fp16.onnx"))
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    pinned = pin_fp32_layers(trt, network, config)
    assert config.get_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    norms = [layer for layer in layers if str(layer.type).endswith("NORMALIZATION")]  # LayerNorm: an FP32 island
    assert norms and all(layer.precision_is_set and layer.precision == trt.float32 for layer in norms)
    assert all(layer.get_output_type(0) == trt.float32 for layer in norms)
    half = [layer for layer in layers if layer.num_outputs and layer.get_output(0).dtype == trt.float16]
    assert half and not any(layer.precision_is_set for layer in half)  # the FP16 parts stay free for the DLA
    assert pinned == sum(layer.precision_is_set for layer in layers) > 0


@pytest.mark.tensorrt
def test_real_dla_engine_on_a_jetson_with_dla(bundle, trt_env):
    from rada_export.tensorrt.build import BuildRequest, build_engine
    from rada_export.tensorrt.dla import dla_build_mode, is_jetson

    if not is_jetson():
        pytest.skip("needs a Jetson with DLA cores (AGX Orin / Orin NX)")
    mode = dla_build_mode(trt_env.tensorrt_version, "fp16")
    if not mode.supported:
        pytest.skip(mode.reason)
    result = build_engine(BuildRequest(bundle, "image_encoder", "fp16", dla_core=0, gpu_fallback=True), environment=trt_env)
    assert result.meta["build_flags"]["strongly_typed"] == mode.strongly_typed
    assert isinstance(result.meta["build_flags"]["dla_gpu_layers"], dict)  # which layers fell back to the GPU
    assert result.report.passed, result.report.to_dict()


@pytest.mark.tensorrt
def test_real_parser_accepts_what_the_lint_passes(tmp_path, trt_env):
    from rada_export.tensorrt.build import BuildRequest, build_engine
    from rada_export.tensorrt.lint import lint_bundle

    pytest.importorskip("open_clip")
    from rada_export.export.bundle import ExportRequest, export_bundle

    out = tmp_path / "frames"
    export_bundle(ExportRequest(out=out, model="rada-tiny-ViT", pretrained="none", classes=CLASSES, fp16=True, embed_preprocess=True))
    assert lint_bundle(out, trt_env.tensorrt_version).ok
    for precision in ("fp32", "fp16"):
        build_engine(BuildRequest(out, "model", precision, max_batch=2), environment=trt_env)


def test_trt_extras_match_their_cuda_major_and_every_advised_extra_exists():
    import re

    from test_package import read_pyproject

    extras = read_pyproject()["project"]["optional-dependencies"]
    for major, runtime in ((12, "nvidia-cuda-runtime-cu12"), (13, "nvidia-cuda-runtime")):
        deps = " ".join(extras[f"trt-cu{major}"])
        assert f"tensorrt-cu{major}>=10." in deps and ",<11" in deps  # the 10.x line the lint's tables cover
        assert re.search(rf"{runtime}>={major}\.0,<{major + 1}\b", deps), deps  # libcudart of the same major
        assert "cuda-python" not in deps and "onnx>=" in deps
        opt_in = " ".join(extras[f"trt11-cu{major}"])  # TensorRT 11.x only when asked for
        assert f"tensorrt-cu{major}>=11.0,<12" in opt_in and re.search(rf"{runtime}>={major}\.0,<{major + 1}\b", opt_in)
    assert extras["trt"] == ["rada-export[trt-cu12]"]
    from rada_export.tensorrt.lint import ONNX_FIX
    from rada_export.tensorrt.preflight import CALIBRATION_FIX

    advice = " ".join([trtenv.TENSORRT_FIX, cm.CUDART_FIX, cm.driver_fix(12040), cm.driver_fix(13000), cm.driver_fix(11000),
                       ONNX_FIX, CALIBRATION_FIX])
    assert set(re.findall(r"rada-export\[([\w-]+)\]", advice)) <= set(extras)
    # calibration on the device needs onnx and onnxruntime: the extra it names must bring both
    assert "'rada-export[jetson]'" in CALIBRATION_FIX
    assert {re.split(r"[<>=;\[ ]", d)[0] for d in extras["jetson"]} >= {"onnx", "onnxruntime"}


def _real_cudart_with_gpu():
    try:
        cudart = cm.load_cudart()
    except RadaError as err:
        pytest.skip(f"needs libcudart and an NVIDIA GPU: {err.problem}")
    count, reason = cm.gpu_count(cudart)
    if not count:
        pytest.skip(f"needs an NVIDIA GPU: {reason}")
    return cudart


@pytest.mark.tensorrt
def test_real_cuda_memory_round_trip_through_ctypes():
    # Needs only a GPU and libcudart (no TensorRT): allocations, async copies on our stream, sync, errors.
    cudart = _real_cudart_with_gpu()
    info = cm.device_info(cudart, 0)
    assert info.name and info.major >= 5 and info.total_memory > 0
    stream = cm.Stream(cudart)
    buffer = cm.DeviceBuffer(cudart)
    try:
        for size in (1, 1000, 3 * 224 * 224 * 8):  # growth reallocates
            host = np.random.default_rng(size).standard_normal(size).astype(np.float32)
            back = np.empty_like(host)
            ptr = buffer.ensure(host.nbytes)
            assert ptr and buffer.capacity >= host.nbytes and buffer.capacity % cm.DeviceBuffer.ALIGN == 0
            cm.copy_to_device(cudart, ptr, host, stream)
            cm.copy_to_host(cudart, back, ptr, stream)
            stream.synchronize()
            np.testing.assert_array_equal(back, host)
        with pytest.raises(cm.CudaError, match="cudaMalloc"):
            cudart.malloc(1 << 62)  # out of memory becomes a RadaError naming the call
    finally:
        buffer.free()
        stream.close()


def test_a_build_never_writes_over_an_engine_it_did_not_record(tmp_path):
    """A user's own engine (trtexec's) at the name a build would take is refused before the build;
    an engine whose JSON of ours names its sha256 is replaceable, as is our JSON whose engine is gone."""
    import hashlib
    import json as json_lib

    from rada_export.tensorrt.build import check_engine_replaceable

    engine = tmp_path / "model.fp16.engine"
    check_engine_replaceable(engine)  # nothing there
    engine.write_bytes(b"trtexec output")
    with pytest.raises(RadaError, match="not an engine rada-export trt recorded"):
        check_engine_replaceable(engine)
    meta = {"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7", "graph": "model",
            "precision": "fp16", "engine_file": engine.name, "engine_sha256": hashlib.sha256(b"other bytes").hexdigest()}
    (tmp_path / "model.fp16.json").write_text(json_lib.dumps(meta))
    with pytest.raises(RadaError, match="not an engine rada-export trt recorded"):
        check_engine_replaceable(engine)  # a JSON that names other bytes does not make the file ours
    meta["engine_sha256"] = hashlib.sha256(b"trtexec output").hexdigest()
    (tmp_path / "model.fp16.json").write_text(json_lib.dumps(meta))
    check_engine_replaceable(engine)
    engine.unlink()
    check_engine_replaceable(engine)  # our JSON, its engine gone
    (tmp_path / "model.fp16.json").write_text("my notes")
    with pytest.raises(RadaError, match="model.fp16.json exists"):
        check_engine_replaceable(engine)
    (tmp_path / "model.fp16.json").unlink()
    engine.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RadaError, match="not an engine rada-export trt recorded"):
        check_engine_replaceable(engine)
    assert engine.is_symlink()


def test_trt_takes_images_as_every_command_does_and_its_former_spelling(bundle, monkeypatch):
    for flag in ("--images", "--calib-images"):
        code, out = run_trt_without_tensorrt(["--bundle", bundle, "--precision", "fp16", flag, "."], monkeypatch)
        assert code == 2 and "--images only applies to --precision int8" in " ".join(out.split()), out
    code, out = run_trt_without_tensorrt(["--bundle", bundle, "--images", ".", "--calib-images", "/tmp"], monkeypatch)
    assert code == 2 and "name different folders" in out, out
