"""Static checks, no TensorRT needed: every operator of the exported graphs is one TensorRT's ONNX parser
takes (ops.py), and every graph passes the lint of the parser's documented rules (lint.py), which
fails a hand-made bad graph for each rule.

The supported list (rada_export/tensorrt/onnx_ops.txt) comes from onnx-tensorrt's docs/operators.md;
the target is TensorRT 10.3 (JetPack 6), the oldest TensorRT bundles are meant for.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("open_clip")
from onnx import TensorProto, helper  # noqa: E402

from rada_export.tensorrt.ops import OPS_FILE, check_ops, load_supported_ops, unsupported_ops  # noqa: E402

from conftest import calibrate_for_tests  # noqa: E402
from rada_export.calibration.int8_fp16 import FP16_QDQ_OPSET  # noqa: E402

TARGET = "10.3"
CLASSES = ["cat", "dog", "bird"]


def _export(out: Path, model: str):
    from rada_export.export.bundle import ExportRequest, export_bundle

    return export_bundle(ExportRequest(out=out, model=model, pretrained="none", classes=CLASSES, fp16=True))


@pytest.fixture(scope="module")
def tiny_bundle(shared_tiny_bundle) -> Path:
    return shared_tiny_bundle(classes=CLASSES, fp16=True)


def _assert_all_supported(bundle: Path) -> list[str]:
    from rada_export.runtimes.manifest import read_manifest

    manifest = read_manifest(bundle)
    checked = []
    for key, entry in sorted(manifest.graphs.items()):
        result = check_ops(bundle / entry.file, TARGET)
        # The INT8-over-FP16 graph carries FP16 Q/DQ scales, which need opset 19.
        assert result.opset == (FP16_QDQ_OPSET if key.endswith(".int8_fp16") else manifest.opset)
        assert result.ok, f"{key} ({entry.file}): {result.describe()}"
        assert unsupported_ops(bundle / entry.file, TARGET) == {}
        checked.append(key)
    return checked


def test_every_graph_of_a_tiny_bundle_is_supported(tiny_bundle):
    checked = _assert_all_supported(tiny_bundle)
    assert {"model", "image_encoder", "text_encoder", "head", "model.fp16", "image_encoder.fp16"} <= set(checked)


def test_int8_graphs_are_supported(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    calibrate_for_tests(bundle, tmp_path)
    checked = _assert_all_supported(bundle)
    assert any(key.endswith(".int8") for key in checked), f"calibration wrote no .int8 graph ({checked})"


def test_every_graph_of_a_vit_b_32_bundle_is_supported(vit_b32_int8):
    # FP32, FP16 and the INT8 Q/DQ graph of the shared full-size bundle: operators, and the full lint.
    assert any(key.endswith(".int8") for key in _assert_all_supported(vit_b32_int8.bundle))
    from rada_export.tensorrt.lint import lint_bundle

    report = lint_bundle(vit_b32_int8.bundle, TARGET)
    assert report.ok, [f.line() for f in report.findings]


# ---------------------------------------------------------------------------------------------
# The check itself, on synthetic graphs


def _model(nodes, inputs=None, outputs=None, initializers=(), opset=18, functions=()):
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])]
    outputs = outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(f.domain, 1) for f in functions]
    return helper.make_model(graph, opset_imports=imports, functions=list(functions))


def test_reports_an_unsupported_operator():
    model = _model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Unique", ["r"], ["y"])])
    assert unsupported_ops(model) == {"Unique": 1}
    result = check_ops(model)
    assert not result.ok and "Unique" in result.describe()


def test_reports_operators_of_other_domains():
    model = _model([helper.make_node("FusedMatMul", ["x", "x"], ["y"], domain="com.microsoft")])
    assert unsupported_ops(model) == {"com.microsoft:FusedMatMul": 1}


def test_looks_inside_subgraphs_and_local_functions():
    then_graph = helper.make_graph([helper.make_node("Unique", ["x"], ["t"])], "then", [],
                                   [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    else_graph = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                                   [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    cond = helper.make_tensor("c", TensorProto.BOOL, [], [True])
    model = _model([helper.make_node("If", ["c"], ["y"], then_branch=then_graph, else_branch=else_graph)], initializers=[cond])
    assert unsupported_ops(model) == {"Unique": 1}

    function = helper.make_function("local", "Block", ["a"], ["b"], [helper.make_node("Det", ["a"], ["b"])],
                                    [helper.make_opsetid("", 18)])
    model = _model([helper.make_node("Block", ["x"], ["y"], domain="local")], functions=[function])
    assert unsupported_ops(model) == {"Det": 1}


def test_operators_newer_than_the_target_and_opsets_out_of_range():
    model = _model([helper.make_node("RMSNormalization", ["x", "x"], ["y"])], opset=23)
    result = check_ops(model, "10.3")
    assert result.unsupported == {"RMSNormalization (needs TensorRT 10.15)": 1}
    assert any("opset 23" in p and "9-20" in p for p in result.problems)
    assert check_ops(model, "10.15").ok
    assert check_ops(_model([helper.make_node("Relu", ["x"], ["y"])], opset=21), "10.3").problems
    assert check_ops(_model([helper.make_node("Relu", ["x"], ["y"])], opset=20), "10.3").ok


def _qdq(zero_point: np.ndarray):
    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    zp = onnx.numpy_helper.from_array(zero_point, "zp")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"]), helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"])]
    return _model(nodes, initializers=[scale, zp])


def test_qdq_must_be_symmetric_int8():
    assert check_ops(_qdq(np.array(0, dtype=np.int8))).ok
    uint8 = check_ops(_qdq(np.array(128, dtype=np.uint8)))
    assert not uint8.ok and any("uint8" in p for p in uint8.problems) and any("not 0" in p for p in uint8.problems)
    assert any("not 0" in p for p in check_ops(_qdq(np.array(3, dtype=np.int8))).problems)


def test_reduce_axes_must_be_constant():
    shape = helper.make_node("Shape", ["x"], ["shp"])
    computed = helper.make_node("ReduceSum", ["x", "shp"], ["y"])
    assert any("axes" in p for p in check_ops(_model([shape, computed])).problems)
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    assert check_ops(_model([helper.make_node("ReduceSum", ["x", "axes"], ["y"])], initializers=[axes])).ok


def test_the_list_names_its_source_and_holds_onnx_operators():
    text = OPS_FILE.read_text()
    assert "onnx/onnx-tensorrt" in text and "docs/operators.md" in text
    supported = load_supported_ops()
    assert supported.opset_range((10, 3)) == (9, 20)
    assert {"LayerNormalization", "Softmax", "MatMul", "QuantizeLinear", "DequantizeLinear", "Erf"} <= set(supported.ops)
    # Three legacy experimental operators are no longer in ONNX's registry; every other name is.
    legacy = {"ImageScaler", "ParametricSoftplus", "ScaledTanh"}
    assert [op for op in supported.ops if op not in legacy and not onnx.defs.has(op)] == []


# ---------------------------------------------------------------------------------------------
# The lint (rada_export/tensorrt/lint.py): every graph the project writes, and one bad graph per rule

from rada_export.tensorrt.lint import RULES, lint_bundle, lint_model  # noqa: E402


def _rules(model, **kw) -> set[str]:
    return {f.rule for f in lint_model(model, "g", TARGET, **kw)}


def test_lint_passes_every_graph_of_a_tiny_bundle_fp32_fp16_and_int8(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    calibrate_for_tests(bundle, tmp_path)
    report = lint_bundle(bundle, TARGET)
    assert {"model", "model.fp16", "image_encoder.int8" if "image_encoder.int8" in report.graphs else "model.int8"} <= set(report.graphs)
    assert any(g.endswith(".int8") for g in report.graphs)
    assert report.ok, [f.line() for f in report.findings]


@pytest.fixture(scope="module")
def frames_bundle(shared_tiny_bundle) -> Path:
    return shared_tiny_bundle(classes=CLASSES, fp16=True, embed_preprocess=True)


def test_frames_bundle_has_uint8_only_at_the_input_which_feeds_only_cast(frames_bundle, tmp_path):
    # --embed-preprocess --fp16, then calibrated: every graph passes, and the frames input is the
    # only uint8 tensor, feeding only Cast (the preprocess casts first).
    from rada_export.runtimes.manifest import read_manifest

    bundle = tmp_path / "bundle"
    shutil.copytree(frames_bundle, bundle)
    calibrate_for_tests(bundle, tmp_path)
    report = lint_bundle(bundle, TARGET)
    assert report.ok, [f.line() for f in report.findings]
    for key, entry in read_manifest(bundle).graphs.items():
        model = onnx.load(str(bundle / entry.file), load_external_data=False)
        frames = [i.name for i in model.graph.input if i.type.tensor_type.elem_type == TensorProto.UINT8]
        for name in frames:
            assert {n.op_type for n in model.graph.node if name in n.input} == {"Cast"}, key


def test_check_cli_fails_a_copy_with_a_uint8_intermediate(frames_bundle, tmp_path):
    from typer.testing import CliRunner

    from rada_export.cli.app import app
    from rada_export.runtimes.manifest import read_manifest, sha256_file, write_manifest

    bundle = tmp_path / "bundle"
    shutil.copytree(frames_bundle, bundle)
    # Put a uint8 Transpose in front of everything, as the pre-fix preprocess did.
    path = bundle / "model.onnx"
    model = onnx.load(str(path))
    name = model.graph.input[0].name
    for node in model.graph.node:
        node.input[:] = ["frames_t" if i == name else i for i in node.input]
    model.graph.node.insert(0, helper.make_node("Transpose", [name], ["frames_t"], perm=[0, 1, 2, 3]))
    onnx.save(model, str(path))
    manifest = read_manifest(bundle)
    manifest.files["model.onnx"] = sha256_file(path)
    write_manifest(bundle, manifest)
    result = CliRunner().invoke(app, ["trt", "--bundle", str(bundle), "--check", "--trt-version", "10.3"])
    assert result.exit_code == 2, result.output
    flat = " ".join(result.output.split())
    assert "model: Transpose" in flat and "[uint8-intermediate]" in flat and "uint8" in flat and "fix:" in flat


def test_check_cli_passes_a_good_bundle_and_needs_no_tensorrt(tiny_bundle, monkeypatch):
    import sys

    from typer.testing import CliRunner

    from rada_export.cli.app import app

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    result = CliRunner().invoke(app, ["trt", "--bundle", str(tiny_bundle), "--check"])
    assert result.exit_code == 0, result.output
    assert "passes" in result.output
    result = CliRunner().invoke(app, ["trt", "--bundle", str(tiny_bundle), "--trt-version", "10.3"])
    assert result.exit_code == 2 and "only applies with --check" in " ".join(result.output.split())


def _u8(nodes, outputs=None, inputs=None, initializers=()):
    inputs = inputs or [helper.make_tensor_value_info("frames", TensorProto.UINT8, ["batch", 4, 4, 3])]
    outputs = outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    return _model(nodes, inputs=inputs, outputs=outputs, initializers=initializers)


def test_rule_uint8_intermediate_and_input_cast():
    bad = _u8([helper.make_node("Transpose", ["frames"], ["t"], perm=[0, 3, 1, 2]),
               helper.make_node("Cast", ["t"], ["y"], to=TensorProto.FLOAT)])
    assert {"uint8-intermediate", "uint8-input-cast"} <= _rules(bad)
    good = _u8([helper.make_node("Cast", ["frames"], ["c"], to=TensorProto.FLOAT),
                helper.make_node("Transpose", ["c"], ["y"], perm=[0, 3, 1, 2])])
    assert _rules(good) == set()


def test_rule_cast_types_uint8_only_to_float():
    bad = _u8([helper.make_node("Cast", ["frames"], ["i"], to=TensorProto.INT32),
               helper.make_node("Cast", ["i"], ["y"], to=TensorProto.FLOAT)])
    assert "cast-types" in _rules(bad)
    to_int8 = _model([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.INT8)])
    assert "cast-types" in _rules(to_int8)


def test_rule_uint8_output_must_come_from_a_float_cast():
    out = [helper.make_tensor_value_info("y", TensorProto.UINT8, None)]
    assert "uint8-output" in _rules(_u8([helper.make_node("Identity", ["frames"], ["y"])], outputs=out))
    fine = _model([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.UINT8)], outputs=out)
    assert _rules(fine) == set()


def test_rule_bool_only_into_operators_that_take_it():
    inputs = [helper.make_tensor_value_info("m", TensorProto.BOOL, ["batch", 3])]
    bad = _model([helper.make_node("Equal", ["m", "m"], ["y"])], inputs=inputs,
                 outputs=[helper.make_tensor_value_info("y", TensorProto.BOOL, None)])
    assert "bool" in _rules(bad)  # ONNX allows bool Equal; TensorRT's Equal takes FP32/FP16/INT32/INT64
    ok = _model([helper.make_node("Not", ["m"], ["y"])], inputs=inputs, outputs=[helper.make_tensor_value_info("y", TensorProto.BOOL, None)])
    assert "bool" not in _rules(ok)


def test_rule_int8_only_inside_qdq():
    inputs = [helper.make_tensor_value_info("q", TensorProto.INT8, ["batch", 3])]
    bad = _model([helper.make_node("Identity", ["q"], ["y"])], inputs=inputs,
                 outputs=[helper.make_tensor_value_info("y", TensorProto.INT8, None)])
    assert "int8" in _rules(bad)


def test_rule_qdq_form():
    assert _rules(_qdq(np.array(0, dtype=np.int8))) == set()
    assert "parser-restriction" in _rules(_qdq(np.array(3, dtype=np.int8)))  # zero point not 0
    assert "qdq" in _rules(_qdq(np.array(0, dtype=np.uint8)))  # uint8 quantization
    # per-channel activation scales, and a negative scale
    scale = onnx.numpy_helper.from_array(np.array([0.1, 0.2, 0.3], np.float32), "s")
    zp = onnx.numpy_helper.from_array(np.zeros(3, np.int8), "zp")
    per_channel = _model([helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], axis=1),
                          helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], axis=1)], initializers=[scale, zp])
    assert any(f.rule == "qdq" and "per tensor" in f.problem for f in lint_model(per_channel, "g", TARGET))
    negative = onnx.numpy_helper.from_array(np.array(-0.1, np.float32), "s")
    zp0 = onnx.numpy_helper.from_array(np.array(0, np.int8), "zp")
    neg = _model([helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"]),
                  helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"])], initializers=[negative, zp0])
    assert any("positive" in f.problem for f in lint_model(neg, "g", TARGET))
    # per-channel weights: one scale per channel along the axis
    w = onnx.numpy_helper.from_array(np.ones((4, 3), np.int8), "w")
    ws = onnx.numpy_helper.from_array(np.full(3, 0.1, np.float32), "ws")
    wz = onnx.numpy_helper.from_array(np.zeros(3, np.int8), "wz")
    wrong_axis = _model([helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wf"], axis=0),
                         helper.make_node("MatMul", ["x", "wf"], ["y"])], initializers=[w, ws, wz],
                        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])])
    assert any("along axis 0" in f.problem for f in lint_model(wrong_axis, "g", TARGET))


def test_rule_opset_and_operator():
    assert "opset" in _rules(_model([helper.make_node("Relu", ["x"], ["y"])], opset=21))
    [finding] = [f for f in lint_model(_model([helper.make_node("Relu", ["x"], ["y"])], opset=21), "g", TARGET) if f.rule == "opset"]
    assert finding.fix == "re-export at opset 18 (`rada-export onnx --opset 18`)"
    assert "operator" in _rules(_model([helper.make_node("Unique", ["x"], ["y"])]))


def test_rule_dynamic_dims_need_a_profile():
    unnamed = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])]
    assert "dynamic-dims" in _rules(_model([helper.make_node("Relu", ["x"], ["y"])], inputs=unnamed))
    other = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["seq", 3])]
    assert "dynamic-dims" in _rules(_model([helper.make_node("Relu", ["x"], ["y"])], inputs=other))
    named = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])]
    model = _model([helper.make_node("Relu", ["x"], ["y"])], inputs=named)
    assert _rules(model) == set()
    assert "dynamic-dims" in _rules(model, manifest_inputs={"x": ["batch", 4]})  # graph and manifest disagree


def test_rule_external_data_must_be_beside_the_graph_and_complete(tmp_path):
    weight = onnx.numpy_helper.from_array(np.ones((3, 3), np.float32), "w")
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], initializers=[weight],
                   inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])])
    path = tmp_path / "g.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="g.onnx.data", size_threshold=0)
    assert _rules(path) == set()
    (tmp_path / "g.onnx.data").write_bytes(b"\0" * 4)  # truncated
    assert "external-data" in _rules(path)
    (tmp_path / "g.onnx.data").unlink()
    assert "external-data" in _rules(path)


def test_rule_protobuf_2gb(tmp_path, monkeypatch):
    from rada_export.tensorrt import lint

    path = tmp_path / "g.onnx"
    onnx.save(_model([helper.make_node("Relu", ["x"], ["y"])],
                     inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])]), str(path))
    assert _rules(path) == set()
    monkeypatch.setattr(lint, "PROTOBUF_LIMIT", path.stat().st_size)  # the 2 GB limit, scaled to this file
    assert "protobuf-2gb" in _rules(path)


def test_rule_attributes_the_parser_rejects():
    roi = helper.make_tensor("roi", TensorProto.FLOAT, [0], [])
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])]
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1.0, 1.0, 0.5, 0.5])

    def resize(**attrs):
        node = helper.make_node("Resize", ["x", "roi", "scales"], ["y"], **attrs)
        return [f.problem for f in lint_model(_model([node], inputs=inputs, initializers=[roi, scales]), "g", TARGET)
                if f.rule == "attribute"]

    assert resize(mode="cubic") == [] and resize(mode="linear") == []  # the importer maps both
    assert any("ignores antialias" in p for p in resize(mode="cubic", antialias=1))  # parsed, then silently not antialiased
    assert any("tf_crop_and_resize" in p for p in resize(mode="linear", coordinate_transformation_mode="tf_crop_and_resize"))
    channel = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1.0, 2.0, 0.5, 0.5])
    node = helper.make_node("Resize", ["x", "roi", "scales"], ["y"], mode="cubic")
    assert "attribute" in _rules(_model([node], inputs=inputs, initializers=[roi, channel]))  # cubic only on the last 2 axes
    pool_in = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])]
    dilated = _model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2])], inputs=pool_in)
    assert "attribute" in _rules(dilated)


def test_every_rule_names_its_source():
    assert set(RULES) >= {"uint8-intermediate", "uint8-input-cast", "bool", "int8", "qdq", "opset", "dynamic-dims",
                          "protobuf-2gb", "external-data", "attribute", "operator", "cast-types", "uint8-output"}
    assert all(src.startswith("https://") for src in RULES.values())


def test_rule_int8_weights_must_go_through_dequantize():
    w = onnx.numpy_helper.from_array(np.ones((3, 3), np.int8), "w")
    cast = _model([helper.make_node("Cast", ["w"], ["wf"], to=TensorProto.FLOAT), helper.make_node("MatMul", ["x", "wf"], ["y"])],
                  initializers=[w], inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])])
    assert "int8" in _rules(cast)


def test_build_plan_and_parity_feeds_cover_the_frame_dims(frames_bundle, tmp_path):
    # The frames graph's height/width/channels are symbolic: the build's profile must range over them
    # (from the manifest, fixed by --frame-size), and the engine's parity feeds must lie inside it.
    from rada_export.export.bundle import ExportRequest, export_bundle
    from rada_export.tensorrt.plan import MAX_FRAMES_BATCH, BuildRequest, plan_build
    from rada_export.tensorrt.verify import make_feeds, sizes_to_check

    plan = plan_build(BuildRequest(frames_bundle, graph="model", precision="fp16"))
    assert plan.ranges["frame_height"] == (1, 1080, 2160) and plan.ranges["frame_width"] == (1, 1920, 3840)
    assert plan.batch[2] <= MAX_FRAMES_BATCH
    low, opt, high = plan.input_profile("frames")
    assert low[1:] == (1, 1, 1) and opt[1:] == (1080, 1920, 3) and high[1:] == (2160, 3840, 4)

    fixed = export_bundle(ExportRequest(out=tmp_path / "fixed", model="rada-tiny-ViT", pretrained="none", classes=["cat", "dog"],
                                        embed_preprocess=True, frame_size=(480, 640), verify=False)).bundle
    plan = plan_build(BuildRequest(fixed, graph="model", precision="fp32"))
    assert plan.input_profile("frames")[0][1:3] == plan.input_profile("frames")[2][1:3] == (480, 640)
    for _, sizes in sizes_to_check(plan.ranges, "model", 2, 2):
        feeds = make_feeds(fixed, plan.manifest, "model", sizes)
        assert feeds["frames"].dtype == np.uint8 and feeds["frames"].shape[1:] == (480, 640, 3)
    report = lint_bundle(fixed, TARGET)
    assert report.ok, [f.line() for f in report.findings]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_pre_build_lint_accepts_the_frame_dims_the_plan_ranges_over(frames_bundle, precision):
    # The build's own lint must allow every dynamic dim the profile has a range for, frame dims included;
    # it once allowed batch/num_classes/num_texts only, refusing every frames graph before TensorRT was loaded.
    from rada_export.tensorrt.plan import BuildRequest, plan_build
    from rada_export.tensorrt.preflight import check_graph_ops

    plan = plan_build(BuildRequest(frames_bundle, graph="model", precision=precision))
    assert {"frame_height", "frame_width", "frame_channels"} <= set(plan.ranges)
    assert check_graph_ops(plan, TARGET, []) == []


def test_int8_engines_build_from_the_qdq_graph_over_fp16(frames_bundle, tmp_path):
    # Under strong typing the Q/DQ graph over FP32 would run its other layers in FP32, so
    # `trt --precision int8` must take `<graph>.int8_fp16` where calibration wrote one.
    from rada_export.tensorrt.plan import BuildRequest, plan_build

    bundle = tmp_path / "bundle"
    shutil.copytree(frames_bundle, bundle)
    calibrate_for_tests(bundle, tmp_path)
    plan = plan_build(BuildRequest(bundle, graph="model", precision="int8"))
    assert plan.onnx_path.name == "model.int8_fp16.onnx"
    # the MatMuls' output types, inferred (a graph need not carry value_info)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(plan.onnx_path), load_external_data=False))
    types = {i.type.tensor_type.elem_type for n in model.graph.node if n.op_type == "MatMul" for i in model.graph.value_info if i.name in n.output}
    assert TensorProto.FLOAT16 in types


@pytest.mark.parametrize("op, inputs", [("MatMul", 2), ("Gemm", 2), ("Softmax", 1), ("Clip", 1)])
def test_rule_float_only_operators_refuse_integer_inputs(op, inputs):
    # docs/operators.md (10.x table) lists floating-point types only for these operators.
    names = ["a", "b"][:inputs]
    for elem, bad in ((TensorProto.FLOAT, False), (TensorProto.FLOAT16, False), (TensorProto.INT64, True), (TensorProto.INT32, True)):
        graph_inputs = [helper.make_tensor_value_info(n, elem, [2, 2]) for n in names]
        model = _model([helper.make_node(op, names, ["y"])], inputs=graph_inputs,
                       outputs=[helper.make_tensor_value_info("y", elem, None)])
        findings = [f for f in lint_model(model, "g", TARGET) if f.rule == "operator-dtype"]
        assert bool(findings) == bad, (op, elem, [f.line() for f in findings])
        if bad:
            assert op in findings[0].problem and "floating-point types only" in findings[0].problem


def test_quantize_without_a_zero_point_is_accepted():
    # onnx-tensorrt 10.1 reads the zero point only when present and quantizes to INT8 without one.
    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    zp = onnx.numpy_helper.from_array(np.array(0, np.int8), "zp")
    good = _model([helper.make_node("QuantizeLinear", ["x", "s"], ["q"]), helper.make_node("DequantizeLinear", ["q", "s"], ["y"])],
                  initializers=[scale])
    assert check_ops(good).ok and lint_model(good, "g", TARGET) == []
    bad = _model([helper.make_node("QuantizeLinear", ["x", "s", "zp3"], ["q"]), helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"])],
                 initializers=[scale, zp, onnx.numpy_helper.from_array(np.array(3, np.int8), "zp3")])
    assert "parser-restriction" in _rules(bad)  # a zero point, when present, must still be 0
