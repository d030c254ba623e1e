"""Which engine serves which graph, and how a batch is split to an engine's profile: pure functions
on plain data (engine descriptions, manifests), run everywhere; nothing here needs TensorRT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rada_export.errors import RadaError
from rada_export.runtimes import engine_layout as layout
from rada_export.runtimes import engine_selection as selection
from rada_export.runtimes import trt_environment as trtenv
from rada_export.runtimes.batch_chunks import plan_chunks
from rada_export.runtimes.manifest import read_manifest

# The shared tiny FP32 + FP16 bundle and a private copy of it, as test_tensorrt.py defines them.
from test_tensorrt import bundle, tiny_bundle  # noqa: F401  (pytest fixtures)


# ---------------------------------------------------------------------------------------------
# Pure helpers


def test_engine_dir_name():
    assert layout.engine_dir_name("NVIDIA GeForce RTX 4090", 8, 9, "10.3.0") == "nvidia-geforce-rtx-4090-sm89-trt10.3.0"
    assert layout.engine_dir_name("Orin", 8, 7, "10.3.0.30") == "orin-sm87-trt10.3.0.30"
    assert layout.engine_dir_name("NVIDIA H200 (MIG 1g.18gb)", 9, 0, "11.0.0") == "nvidia-h200-mig-1g-18gb-sm90-trt11.0.0"
    assert layout.engine_dir_name("", 7, 2, "10.1/x") == "gpu-sm72-trt10.1-x"
    env = layout.EngineEnvironment("10.3.0", "Orin", "8.7")
    assert env.dir_name == "orin-sm87-trt10.3.0"
    assert layout.meta_path(Path("e/model.fp16.engine")) == Path("e/model.fp16.json")
    assert trtenv.parse_version("10.3.0.30") == (10, 3, 0, 30) and trtenv.parse_version("11.0.0b1") == (11, 0, 0)


def _meta(**over):
    meta = {"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7", "graph": "model", "precision": "fp16"}
    meta.update(over)
    return meta


def test_engine_from_another_tensorrt_or_gpu_is_refused():
    here = layout.EngineEnvironment("10.3.0", "Orin", "8.7")
    layout.check_engine_compat(_meta(), here)
    with pytest.raises(RadaError) as err:
        layout.check_engine_compat(_meta(tensorrt_version="10.7.0"), here, "model.fp16.engine")
    text = str(err.value)
    assert "10.7.0" in text and "10.3.0" in text and "TensorRT version" in text
    assert err.value.fix == "rebuild it on this device: `rada-export trt --bundle <bundle> --graph model --precision fp16`"
    with pytest.raises(RadaError) as err:
        layout.check_engine_compat(_meta(gpu_name="NVIDIA GeForce RTX 3090", compute_capability="8.6"), here)
    text = str(err.value)
    assert "RTX 3090" in text and "Orin" in text and "compute capability 8.6" in text and "8.7" in text
    with pytest.raises(RadaError, match="lacks"):
        layout.check_engine_compat({"graph": "model"}, here)


def test_engine_from_another_onnx_file_is_refused(tiny_bundle):
    manifest = read_manifest(tiny_bundle)
    meta = _meta(onnx_file="model.fp16.onnx", onnx_sha256=manifest.files["model.fp16.onnx"])
    layout.check_engine_matches_bundle(meta, manifest)
    with pytest.raises(RadaError, match="another version of model.fp16.onnx"):
        layout.check_engine_matches_bundle({**meta, "onnx_sha256": "0" * 64}, manifest)


def test_find_engine(tmp_path):
    env = layout.EngineEnvironment("10.3.0", "Orin", "8.7")
    assert selection.find_engine(tmp_path, "model", "fp16", env) is None
    path = layout.engine_path(tmp_path, "model", "fp16", env)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"engine")
    layout.meta_path(path).write_text(json.dumps(_meta()))
    assert selection.find_engine(tmp_path, "model", "fp16", env) == path
    assert selection.find_engine(tmp_path, "model", "int8", env) is None
    assert selection.find_engine(tmp_path, "model", "fp16", layout.EngineEnvironment("10.7.0", "Orin", "8.7")) is None
    assert [p for p, _ in layout.list_engines(tmp_path)] == [path]


# ---------------------------------------------------------------------------------------------
# Per-graph engine selection and batch splitting: pure functions


HERE = layout.EngineEnvironment("10.3.0.30", "Orin", "8.7")


def _engine_meta(manifest, graph, precision, **over):
    key = manifest.graph_key(graph, precision)
    onnx_file = manifest.graphs[key].file if key in manifest.graphs else manifest.graphs[graph].file
    meta = {"tensorrt_version": HERE.tensorrt_version, "gpu_name": HERE.gpu_name, "compute_capability": HERE.compute_capability,
            "graph": graph, "precision": precision, "onnx_file": onnx_file, "onnx_sha256": manifest.files[onnx_file],
            "verification": {"passed": True}}
    meta.update(over)
    return meta


def test_the_default_model_engine_is_used_and_the_other_graphs_run_on_onnxruntime(tiny_bundle):
    manifest = read_manifest(tiny_bundle)
    rel = f"engines/{HERE.dir_name}/model.fp16.engine"
    placements = selection.select_engines(manifest, {rel: _engine_meta(manifest, "model", "fp16")}, HERE, "fp16")
    assert placements["model"].backend == "tensorrt" and placements["model"].engine == rel
    assert {g: p.backend for g, p in placements.items() if g != "model"} == {
        "image_encoder": "onnxruntime", "text_encoder": "onnxruntime", "head": "onnxruntime"}
    assert placements["text_encoder"].precision == "fp32" and placements["image_encoder"].precision == "fp16"
    text = selection.describe_placements(placements, "ONNX Runtime CPU")
    assert text.startswith(f"model: TensorRT fp16 ({rel})") and "image_encoder, text_encoder, head: ONNX Runtime CPU" in text


def test_engines_for_another_gpu_version_onnx_file_or_failed_parity_are_not_selected(tiny_bundle):
    manifest = read_manifest(tiny_bundle)
    cases = {
        "built with TensorRT 10.7.0": _engine_meta(manifest, "model", "fp16", tensorrt_version="10.7.0"),
        "on RTX 4090": _engine_meta(manifest, "model", "fp16", gpu_name="RTX 4090", compute_capability="8.9"),
        "another version of model.fp16.onnx": _engine_meta(manifest, "model", "fp16", onnx_sha256="0" * 64),
        "failed the parity check": _engine_meta(manifest, "model", "fp16", verification={"passed": False}),
    }
    for reason, meta in cases.items():
        placement = selection.select_engines(manifest, {"engines/x/model.fp16.engine": meta}, HERE, "fp16")["model"]
        assert placement.backend == "onnxruntime" and reason in placement.reason, (reason, placement)
    unverified = _engine_meta(manifest, "model", "fp16", verification={"passed": None, "status": "parity not checked"})
    placement = selection.select_engines(manifest, {"engines/x/model.fp16.engine": unverified}, HERE, "fp16")["model"]
    assert placement.backend == "tensorrt" and "parity not checked" in placement.reason
    # No TensorRT here: everything on ONNX Runtime, with the reason
    none = selection.select_engines(manifest, {"engines/x/model.fp16.engine": cases["on RTX 4090"]}, None, "fp16", "no GPU")
    assert {p.backend for p in none.values()} == {"onnxruntime"} and none["model"].reason == "no GPU"


def test_graphs_without_a_variant_take_their_fp32_engine_and_precision_must_match(tiny_bundle):
    manifest = read_manifest(tiny_bundle)
    engines = {"engines/x/text_encoder.fp32.engine": _engine_meta(manifest, "text_encoder", "fp32"),
               "engines/x/model.int8.engine": {**_engine_meta(manifest, "model", "fp16"), "precision": "int8"}}
    placements = selection.select_engines(manifest, engines, HERE, "fp16")
    assert placements["text_encoder"].backend == "tensorrt"  # no FP16 text encoder exists: its FP32 engine serves
    assert placements["model"].backend == "onnxruntime"  # an INT8 engine does not serve an FP16 request


def _write_engine(bundle: Path, graph: str, precision: str, meta: dict, folder: str = HERE.dir_name) -> str:
    """An engine file and its JSON in BUNDLE/engines/FOLDER, as `rada-export trt` lays them out; returns the relative path."""
    path = bundle / "engines" / folder / layout.engine_file_name(graph, precision)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"engine bytes")
    layout.meta_path(path).write_text(json.dumps(meta))
    return path.relative_to(bundle).as_posix()


def _auto(bundle: Path, current=HERE):
    return selection.select_engines(read_manifest(bundle), layout.scan_engines(bundle), current, "auto")


def test_auto_takes_int8_that_passed_parity_then_fp16_then_fp32_else_onnxruntime(bundle):
    manifest = read_manifest(bundle)
    # An INT8 model engine (from the FP16 graph's file here: the bundle has no Q/DQ graph; selection reads the JSON)
    int8 = _write_engine(bundle, "model", "int8", {**_engine_meta(manifest, "model", "fp16"), "precision": "int8"})
    fp16 = _write_engine(bundle, "model", "fp16", _engine_meta(manifest, "model", "fp16"))
    fp32 = _write_engine(bundle, "model", "fp32", _engine_meta(manifest, "model", "fp32"))
    text = _write_engine(bundle, "text_encoder", "fp32", _engine_meta(manifest, "text_encoder", "fp32",
                                                                      verification={"passed": None, "status": "parity not checked"}))
    placements = _auto(bundle)
    assert (placements["model"].engine, placements["model"].precision) == (int8, "int8")
    assert placements["text_encoder"].engine == text and "parity not checked" in placements["text_encoder"].reason
    # graphs without an engine run on ONNX Runtime, in FP32 (what precision auto means there)
    for graph in ("image_encoder", "head"):
        assert (placements[graph].backend, placements[graph].precision) == ("onnxruntime", "fp32")
        assert "no int8/fp16/fp32" in placements[graph].reason

    for verification, expect in (({"passed": None, "status": "parity not checked"}, fp16), ({"passed": False}, fp16)):
        (bundle / layout.meta_path(int8)).write_text(json.dumps({**_engine_meta(manifest, "model", "fp16"), "precision": "int8",
                                                                 "verification": verification}))
        model = _auto(bundle)["model"]
        assert (model.engine, model.precision) == (expect, "fp16"), model
    (bundle / fp16).unlink()
    assert _auto(bundle)["model"].engine == fp32
    (bundle / layout.meta_path(fp32)).write_text(json.dumps(_engine_meta(manifest, "model", "fp32", verification={"passed": False})))
    model = _auto(bundle)["model"]
    assert model.backend == "onnxruntime" and model.precision == "fp32"
    assert f"{int8}: it failed the parity check" in model.reason and f"{fp32}: it failed the parity check" in model.reason
    (bundle / layout.meta_path(int8)).write_text(json.dumps({**_engine_meta(manifest, "model", "fp16"), "precision": "int8",
                                                             "verification": {"passed": None}}))
    assert "INT8 engine only where its parity check passed" in _auto(bundle)["model"].reason
    # an explicit precision="int8" still takes it, saying its parity was not checked
    explicit = selection.select_engines(manifest, layout.scan_engines(bundle), HERE, "int8")["model"]
    assert explicit.engine == int8 and "parity not checked" in explicit.reason


def test_auto_skips_engines_for_another_gpu_tensorrt_or_onnx_file(bundle):
    manifest = read_manifest(bundle)
    _write_engine(bundle, "model", "int8", {**_engine_meta(manifest, "model", "fp16"), "precision": "int8", "tensorrt_version": "10.7.0"})
    _write_engine(bundle, "model", "fp16", _engine_meta(manifest, "model", "fp16", gpu_name="RTX 4090", compute_capability="8.9"))
    _write_engine(bundle, "model", "fp32", _engine_meta(manifest, "model", "fp32", onnx_sha256="0" * 64))
    model = _auto(bundle)["model"]
    assert model.backend == "onnxruntime"
    for reason in ("built with TensorRT 10.7.0", "on RTX 4090", "another version of model.onnx"):
        assert reason in model.reason, model.reason
    # the same engines in the folder of another device are what that device selects
    other = layout.EngineEnvironment("10.7.0", "Orin", "8.7")
    assert _auto(bundle, other)["model"].precision == "int8"
    # no TensorRT here: everything on ONNX Runtime FP32, with the reason
    none = selection.select_engines(manifest, layout.scan_engines(bundle), None, "auto", "TensorRT is not installed")
    assert {(p.backend, p.precision, p.reason) for p in none.values()} == {("onnxruntime", "fp32", "TensorRT is not installed")}


def test_the_default_precision_is_auto():
    import inspect

    assert inspect.signature(selection.select_engines).parameters["precision"].default == "auto"
    assert selection.AUTO_ORDER == ("int8", "fp16", "fp32")


def test_scan_engines_reads_the_folder_and_stays_inside_it(bundle, tmp_path):
    manifest = read_manifest(bundle)
    folder = bundle / "engines" / HERE.dir_name
    folder.mkdir(parents=True)
    (folder / "model.fp16.engine").write_bytes(b"engine")
    layout.meta_path(folder / "model.fp16.engine").write_text(json.dumps(_engine_meta(manifest, "model", "fp16")))
    outside = tmp_path / "outside.engine"
    outside.write_bytes(b"x")
    (folder / "head.fp32.engine").symlink_to(outside)
    found = layout.scan_engines(bundle)
    assert list(found) == [f"engines/{HERE.dir_name}/model.fp16.engine"]
    assert selection.select_engines(manifest, found, HERE, "fp16")["model"].backend == "tensorrt"


def test_runtime_description_says_which_graph_runs_where(bundle):
    from rada_export.runtimes import load_bundle

    from rada_export.runtimes.openvino_backend import openvino_installed

    rt = load_bundle(bundle, device="cpu")
    if openvino_installed():  # on a CPU, auto prefers OpenVINO where it is installed (docs/runtime.md#backends)
        assert rt.backend == "openvino" and "backend 'auto' picked OpenVINO" in rt.description
    else:
        assert rt.backend == "onnxruntime-cpu" and "ONNX Runtime on the CPU" in rt.description
        assert "OpenVINO, faster on CPUs, is not installed" in rt.description
    rt = load_bundle(bundle, backend="onnxruntime", device="cpu")
    assert rt.backend == "onnxruntime-cpu" and "ONNX Runtime on the CPU" in rt.description


@pytest.mark.parametrize("total, low, high, chunks", [
    (10, 1, 4, [(0, 4, 4), (4, 8, 4), (8, 10, 2)]),
    (4, 1, 4, [(0, 4, 4)]),
    (6, 4, 4, [(0, 4, 4), (4, 6, 4)]),  # fixed-batch (DLA) engine: the last slice is padded
    (3, 1, 1, [(0, 1, 1), (1, 2, 1), (2, 3, 1)]),  # DLA engines built for batch 1
    (0, 1, 8, []),
])
def test_batches_are_split_to_the_engine_profile(total, low, high, chunks):
    assert plan_chunks(total, low, high) == chunks


def test_an_unusable_profile_is_refused():
    with pytest.raises(RadaError):
        plan_chunks(4, 0, 2)
    with pytest.raises(RadaError):
        plan_chunks(4, 3, 2)


# ---------------------------------------------------------------------------------------------
# Trust: an engine is executable code; the device loads only the engines it built


@pytest.fixture
def trust_list(tmp_path, monkeypatch) -> Path:
    """This test's own list of trusted engines (never the user's)."""
    path = tmp_path / "state" / "trusted-engines.txt"
    monkeypatch.setenv(layout.TRUSTED_ENGINES_ENV, str(path))
    return path


def _engine_files(folder: Path, payload: bytes, **over) -> Path:
    import hashlib

    engine = folder / "model.fp16.engine"
    engine.parent.mkdir(parents=True, exist_ok=True)
    engine.write_bytes(payload)
    meta = _meta(engine_size=len(payload), engine_sha256=hashlib.sha256(payload).hexdigest(), **over)
    layout.meta_path(engine).write_text(json.dumps(meta))
    return engine


def test_the_trusted_engine_list_is_kept_outside_bundles_and_survives_damage(trust_list):
    assert layout.trusted_engines_file() == trust_list and layout.trusted_engines() == frozenset()
    first, second = "a" * 64, "b" * 64
    assert layout.trust_engine(first) == trust_list and layout.trust_engine(second) == trust_list
    layout.trust_engine(first)  # recorded once
    assert trust_list.read_text().splitlines() == [first, second]
    with open(trust_list, "a") as fh:
        fh.write("not a digest\n" + "C" * 64 + "\n")  # damaged or foreign lines are ignored
    assert layout.trusted_engines() == {first, second}
    assert layout.is_trusted_engine(first) and not layout.is_trusted_engine("c" * 64) and not layout.is_trusted_engine(None)
    with pytest.raises(RadaError, match="is not a sha256"):
        layout.trust_engine("../../etc/passwd")


def test_an_engine_that_came_with_a_bundle_is_not_loaded(tmp_path, trust_list):
    """Refused before TensorRT (or a GPU) is asked: its bytes are never deserialized."""
    from rada_export.runtimes.tensorrt_engine import TensorRTEngine

    engine = _engine_files(tmp_path / "bundle" / "engines" / "orin-sm87-trt10.3.0", b"\x00engine bytes" * 100)
    with pytest.raises(RadaError) as err:
        TensorRTEngine(engine)
    assert "was not built on this device by `rada-export trt`" in err.value.problem and str(trust_list) in err.value.problem
    assert "rada-export trt --trust-engine ENGINE" in err.value.fix
    # its owner vouches for it: recorded, the load goes on to the next check (TensorRT, missing here)
    digest, where = layout.trust_engine_file(engine)
    assert where == trust_list and layout.is_trusted_engine(digest)
    with pytest.raises(RadaError) as err:
        TensorRTEngine(engine)
    assert "was not built on this device" not in err.value.problem
    # a JSON that does not describe the file is not registered
    engine.write_bytes(b"other bytes")
    with pytest.raises(RadaError, match="does not match the sha256"):
        layout.trust_engine_file(engine)


def test_selection_passes_over_engines_this_device_did_not_build(tiny_bundle, trust_list):
    manifest = read_manifest(tiny_bundle)
    meta = _engine_meta(manifest, "model", "fp16", engine_sha256="d" * 64)
    engines = {f"engines/{HERE.dir_name}/model.fp16.engine": meta}
    placement = selection.select_engines(manifest, engines, HERE, "fp16", trusted=layout.is_trusted_engine)["model"]
    assert placement.backend == "onnxruntime" and "not built on this device" in placement.reason
    layout.trust_engine("d" * 64)
    assert selection.select_engines(manifest, engines, HERE, "fp16", trusted=layout.is_trusted_engine)["model"].backend == "tensorrt"


def test_trt_trust_engine_records_an_engine_from_the_cli(tmp_path, trust_list, monkeypatch):
    from trt_cli import run_trt_without_tensorrt

    engine = _engine_files(tmp_path / "engines" / "orin-sm87-trt10.3.0", b"engine" * 50)
    code, out = run_trt_without_tensorrt(["--bundle", tmp_path, "--trust-engine", engine], monkeypatch)
    assert code == 0 and "this device may load it" in out, out
    assert layout.trusted_engines() == {json.loads(layout.meta_path(engine).read_text())["engine_sha256"]}


@pytest.mark.parametrize("text", ['{"tensorrt_version": ' + "9" * 5000 + "}", "[" * 100000 + "]" * 100000,
                                  '{"graph": "' + "x" * (2**20 + 10) + '"}', "\xff\xfe"])
def test_a_hostile_engine_description_is_an_unreadable_one(tmp_path, text):
    engine = tmp_path / "engines" / "gpu-sm87-trt10.3.0" / "model.fp16.engine"
    engine.parent.mkdir(parents=True)
    engine.write_bytes(b"x")
    layout.meta_path(engine).write_bytes(text.encode("latin-1"))
    with pytest.raises(RadaError, match="is not a readable engine description"):
        layout.read_engine_meta(engine)
    assert layout.scan_engines(tmp_path) == {"engines/gpu-sm87-trt10.3.0/model.fp16.engine": None}
