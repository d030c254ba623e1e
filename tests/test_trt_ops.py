"""Static check, no TensorRT needed: every operator of the exported graphs is one TensorRT's ONNX parser takes.

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
def tiny_bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ops") / "tiny"
    _export(out, "rada-tiny-ViT")
    return out


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


@pytest.mark.slow
def test_every_graph_of_a_vit_b_32_bundle_is_supported(vit_b32_int8):
    # FP32, FP16 and the INT8 Q/DQ graph of the shared full-size bundle.
    assert any(key.endswith(".int8") for key in _assert_all_supported(vit_b32_int8.bundle))


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
