"""Graph precision: every graph of a bundle in a bare ONNX Runtime session, the FP16 graph's
attention and large-graph paths, and the INT8 graph built over FP16."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rada_export.export import fp16
from rada_export.runtimes.manifest import read_manifest

# Runs one graph in `onnxruntime.InferenceSession(path)` with default options and providers, as a
# third-party tool would (polygraphy, Triton's ONNX Runtime backend). In a subprocess: a segfault
# must fail the test, not end pytest.
BARE_SESSION = r"""
import json, sys
import numpy as np
import onnxruntime as ort

path, batch = sys.argv[1], int(sys.argv[2])
session = ort.InferenceSession(path)
types = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8,
         "tensor(int64)": np.int64, "tensor(int32)": np.int32}
rng = np.random.default_rng(0)
feeds = {}
for value in session.get_inputs():
    shape = [d if isinstance(d, int) else batch for d in value.shape]
    dtype = types[value.type]
    if dtype == np.uint8:
        feeds[value.name] = rng.integers(0, 256, shape, dtype=np.uint8)
    elif np.issubdtype(dtype, np.integer):
        feeds[value.name] = rng.integers(0, 10, shape).astype(dtype)
    else:
        feeds[value.name] = rng.standard_normal(shape).astype(dtype)
outputs = session.run(None, feeds)
print(json.dumps({"shapes": [list(o.shape) for o in outputs], "finite": all(bool(np.isfinite(o).all()) for o in outputs)}))
"""


def bare_session(path: Path, batch: int = 2) -> dict:
    proc = subprocess.run([sys.executable, "-c", BARE_SESSION, str(path), str(batch)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{path.name}: bare ONNX Runtime session exited {proc.returncode}: {proc.stderr[-800:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tiny_bundles(tmp_path_factory, tiny_clip):
    """Two tiny bundles (pixels, and uint8 frames with preprocessing embedded), FP16 and INT8 graphs."""
    from conftest import calibrate_for_tests

    from rada_export.export.bundle import ExportRequest, export_bundle
    from rada_export.synthetic import CLASSES

    bundles = []
    for embed in (False, True):
        root = tmp_path_factory.mktemp("bare-embed" if embed else "bare")
        result = export_bundle(ExportRequest(out=root / "bundle", model="rada-tiny-ViT", pretrained="none",
                                             classes=[c[0] for c in CLASSES], fp16=True, embed_preprocess=embed,
                                             verify=False), clip=tiny_clip)
        calibrate_for_tests(result.bundle, root)
        bundles.append(result.bundle)
    return bundles


def test_every_graph_of_tiny_bundles_runs_in_a_bare_session(tiny_bundles):
    seen = set()
    for bundle in tiny_bundles:
        manifest = read_manifest(bundle)
        for key, entry in manifest.graphs.items():
            result = bare_session(bundle / entry.file)
            assert result["finite"], (bundle.name, key)
            seen.add(entry.precision)
    assert {"fp32", "fp16", "int8"} <= seen


def test_every_graph_of_vit_b_32_runs_in_a_bare_session(vit_b32_int8):
    bundle = vit_b32_int8.bundle
    for key, entry in read_manifest(bundle).graphs.items():
        assert bare_session(bundle / entry.file, batch=1)["finite"], key


def _batch_transpose_matmul(dtype: int) -> onnx.ModelProto:
    """The pattern that crashed ONNX Runtime's session creation: Transpose(perm=[1, 0, 2]) -> MatMul(const)."""
    np_type = helper.tensor_dtype_to_np_dtype(dtype)
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 8)).astype(np_type), "w")
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2], name="t"),
         helper.make_node("MatMul", ["xt", "w"], ["y"], name="mm")],
        "g", [helper.make_tensor_value_info("x", dtype, ["batch", 5, 16])],
        [helper.make_tensor_value_info("y", dtype, [5, "batch", 8])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.FLOAT16])
def test_matmul_moves_before_the_batch_transpose(tmp_path, dtype):
    import onnxruntime as ort

    model = _batch_transpose_matmul(dtype)
    moved = fp16.matmul_before_batch_transpose(model)
    onnx.checker.check_model(moved, full_check=True)
    assert [n.op_type for n in moved.graph.node] == ["MatMul", "Transpose"]
    onnx.save(moved, str(tmp_path / "moved.onnx"))
    assert bare_session(tmp_path / "moved.onnx")["shapes"] == [[5, 2, 8]]
    # Same numbers as the original order (run without the pass the original trips).
    onnx.save(model, str(tmp_path / "original.onnx"))
    x = np.random.default_rng(1).standard_normal((2, 5, 16)).astype(helper.tensor_dtype_to_np_dtype(dtype))
    reference = ort.InferenceSession(str(tmp_path / "original.onnx"), disabled_optimizers=["NchwcTransformer"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(tmp_path / "moved.onnx")).run(None, {"x": x})[0]
    np.testing.assert_allclose(got.astype(np.float32), reference.astype(np.float32), rtol=1e-3, atol=1e-3)


def test_fp16_graph_has_no_batch_transpose_before_a_weight_matmul(tiny_bundles):
    for bundle in tiny_bundles:
        manifest = read_manifest(bundle)
        for key in ("model.fp16", "image_encoder.fp16"):
            model = onnx.load(str(bundle / manifest.graphs[key].file))
            producers = {o: n for n in model.graph.node for o in n.output}
            weights = {i.name for i in model.graph.initializer}
            offending = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights
                         and n.input[0] in producers and producers[n.input[0]].op_type == "Transpose"]
            assert not offending, (key, offending[:3])


def test_fp16_conversion_from_external_data_equals_the_in_memory_one(tiny_clip, tmp_path):
    """The large-graph path: the graph read without its weights (they stay in the .data file and
    are converted one by one) gives the same FP16 graph as the in-memory conversion."""
    from rada_export.export.bundle import ExportRequest, export_bundle
    from rada_export.export.onnx_io import load_graph

    result = export_bundle(ExportRequest(out=tmp_path / "b", model="rada-tiny-ViT", pretrained="none",
                                         classes=["a", "b"], verify=False, external_data_threshold=0), clip=tiny_clip)
    source = result.bundle / "image_encoder.onnx"
    assert (result.bundle / "image_encoder.onnx.data").is_file()
    model = onnx.load(str(source))
    in_memory = fp16.to_fp16(model)
    out = tmp_path / "fp16" / "image_encoder.fp16.onnx"
    out.parent.mkdir()
    assert fp16.convert_file(source, out, external_threshold=0) == out.with_name(out.name + ".data")
    on_file = load_graph(out)
    assert [n for n in on_file.graph.node] == [n for n in in_memory.graph.node]
    a = {i.name: numpy_helper.to_array(i) for i in in_memory.graph.initializer}
    b = {i.name: numpy_helper.to_array(i) for i in on_file.graph.initializer}
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert sum(v.dtype == np.float16 for v in b.values()) > 10
    # The input model kept its weights: the in-memory conversion works on a copy.
    assert all(i.HasField("raw_data") or len(i.float_data) for i in model.graph.initializer if i.data_type == TensorProto.FLOAT)
    # The converted graph's own .data file is the only one it reads: the source's can go.
    (result.bundle / "image_encoder.onnx.data").unlink()
    assert bare_session(out)["finite"]


def test_fp16_keeps_erf_in_fp16_and_only_the_fragile_ops_in_fp32(tiny_bundles):
    """GELU's Erf runs in FP16 (TensorRT and ONNX Runtime both take it), so an MLP block has no Cast."""
    bundle = tiny_bundles[0]
    model = onnx.load(str(bundle / "image_encoder.fp16.onnx"))
    types = fp16.node_compute_types(model)
    erf = [n.name for n in model.graph.node if n.op_type == "Erf"]
    assert erf and {types[n] for n in erf} == {"float16"}
    producers = {o: n for n in model.graph.node for o in n.output}
    erf_nodes = [n for n in model.graph.node if n.op_type == "Erf"]
    around = [producers[n.input[0]].name for n in erf_nodes if producers[n.input[0]].op_type == "Cast"]
    around += [r.name for n in erf_nodes for r in model.graph.node if n.output[0] in r.input and r.op_type == "Cast"]
    assert not around, around[:3]
    # In an MLP block the only Cast is the one from its FP32 LayerNorm into the first Linear layer.
    casts_in_mlp = [n.name for n in model.graph.node if n.op_type == "Cast" and "/mlp/" in n.name]
    assert all(name.endswith("/mlp/c_fc/MatMul/cast_0_to_fp16") for name in casts_in_mlp), casts_in_mlp[:3]
    assert {types[n.name] for n in model.graph.node if n.op_type == "LayerNormalization"} == {"float32"}


def test_int8_graph_for_tensorrt_runs_its_unquantized_parts_in_fp16(tiny_bundles):
    from rada_export.calibration.int8_fp16 import audit_qdq_types

    bundle = tiny_bundles[0]
    manifest = read_manifest(bundle)
    for name in ("model", "image_encoder"):
        over32 = onnx.load(str(bundle / manifest.graphs[f"{name}.int8"].file))
        over16 = onnx.load(str(bundle / manifest.graphs[f"{name}.int8_fp16"].file))
        types = fp16.node_compute_types(over16)
        by_op: dict[str, set] = {}
        for node in over16.graph.node:
            if not any(scope in node.name for scope in fp16.FP32_SCOPES):
                by_op.setdefault(node.op_type, set()).add(types.get(node.name))
        # The bulk (every MatMul/Gemm, quantized or not, and the activations) is FP16 ...
        assert by_op["MatMul"] | by_op.get("Gemm", set()) == {"float16"}, by_op["MatMul"]
        assert by_op["Add"] - {None} == {"float16"}  # None: integer shape arithmetic
        # ... what the FP16 graph keeps in FP32 stays FP32 ...
        assert by_op["LayerNormalization"] == {"float32"}
        assert by_op.get("ReduceL2", {"float32"}) == {"float32"}
        # ... and the Q/DQ nodes are the calibrated ones, with FP16 scales and int8 zero points of 0.
        audit = audit_qdq_types(over16)
        assert not audit.violations and audit.qdq_nodes == audit.fp16_scales
        assert audit.qdq_nodes == sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in over32.graph.node)
        inits = {i.name: i for i in over16.graph.initializer}
        for node in over16.graph.node:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                zero = numpy_helper.to_array(inits[node.input[2]])
                assert zero.dtype == np.int8 and not zero.any()
        assert max(o.version for o in over16.opset_import if o.domain in ("", "ai.onnx")) >= 19
        assert [i.type.tensor_type.elem_type for i in over16.graph.input] == [i.type.tensor_type.elem_type for i in over32.graph.input]
        assert all(o.type.tensor_type.elem_type == TensorProto.FLOAT for o in over16.graph.output)


def test_int8_graph_for_tensorrt_computes_the_calibrated_quantization(tiny_bundles):
    """Its features match the FP32 Q/DQ graph evaluated as written (quantize, dequantize, float
    GEMM: what TensorRT's int8 GEMMs compute), to FP16 rounding, and meet the INT8 thresholds."""
    import onnxruntime as ort

    bundle = tiny_bundles[0]
    manifest = read_manifest(bundle)
    pixels = np.random.default_rng(3).standard_normal((8, 3, 64, 64)).astype(np.float32)

    def features(key, optimize=True):
        options = ort.SessionOptions()
        if not optimize:  # no fusion into ONNX Runtime's own integer kernels: the Q/DQ as written
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(bundle / manifest.graphs[key].file), options)
        return session.run(["image_features"], {"pixels": pixels})[0]

    def cosines(a, b):
        return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

    simulated = features("image_encoder.int8", optimize=False)
    over16 = features("image_encoder.int8_fp16")
    assert cosines(simulated, over16).min() >= 0.999
    assert cosines(features("image_encoder"), over16).mean() >= 0.98
    assert manifest.calibration["image_encoder.int8_fp16"]["report"]["mean_cosine"] >= 0.98


def test_int8_fp16_conversion_carries_external_data(tiny_bundles, tmp_path):
    """The large-graph path: weights in a .data file in and out, shape inference on files only."""
    from rada_export.calibration.int8_fp16 import convert_file
    from rada_export.export.onnx_io import save_graph

    bundle = tiny_bundles[0]
    source = tmp_path / "in" / "image_encoder.int8.onnx"
    source.parent.mkdir()
    assert save_graph(onnx.load(str(bundle / "image_encoder.int8.onnx")), source, external_threshold=0) is not None

    out = tmp_path / "out" / "image_encoder.int8_fp16.onnx"
    out.parent.mkdir()
    data = convert_file(source, out, external_threshold=0)
    assert data == out.with_name(out.name + ".data") and data.stat().st_size > 100_000
    assert bare_session(out)["finite"]
    # The same graph as the in-memory conversion of the same Q/DQ graph.
    from rada_export.calibration.int8_fp16 import qdq_to_fp16

    in_memory = qdq_to_fp16(onnx.load(str(bundle / "image_encoder.int8.onnx")))
    assert [n for n in onnx.load(str(out)).graph.node] == [n for n in in_memory.graph.node]


def test_scales_below_fp16_normal_range_are_raised_without_changing_the_weights():
    # A convolutional tower with random weights calibrated RN50 activations to scales of 4.9e-5,
    # below FP16's smallest normal (6.1e-5): the INT8-over-FP16 graph must still convert, its int8
    # weights dequantizing to the same values, its activation range only growing.
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from rada_export.calibration.int8_fp16 import qdq_to_fp16, raise_tiny_scales

    rng = np.random.default_rng(0)
    w_scale = np.array([3e-5, 2e-3, 5e-5], dtype=np.float32)  # per output channel, two of them tiny
    w_q = rng.integers(-127, 128, size=(4, 3), dtype=np.int8)
    inits = [numpy_helper.from_array(np.float32(4e-5), "x_scale"), numpy_helper.from_array(np.int8(0), "zp"),
             numpy_helper.from_array(w_q, "w_q"), numpy_helper.from_array(w_scale, "w_scale"),
             numpy_helper.from_array(np.zeros(3, dtype=np.int8), "w_zp")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "zp"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", "zp"], ["xd"], name="dq"),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="wdq", axis=1),
             helper.make_node("MatMul", ["xd", "w"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8

    raised, count = raise_tiny_scales(model)
    assert count == 3
    values = {i.name: numpy_helper.to_array(i) for i in raised.graph.initializer}
    assert values["x_scale"] >= np.finfo(np.float16).tiny and values["w_scale"][1] == w_scale[1]
    before = w_q.astype(np.float32) * w_scale
    after = values["w_q"].astype(np.float32) * values["w_scale"]
    assert np.abs(after - before).max() <= values["w_scale"].max() / 2 + 1e-9  # within half a new step

    x = (rng.standard_normal((2, 4)) * 2e-3).astype(np.float32)  # inside both ranges: nothing clips
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    reference = x @ before
    assert np.abs(run(raised) - reference).max() < 0.05 * np.abs(reference).max()
    converted = qdq_to_fp16(model)  # raised the old audit's "below FP16's normal range" before the fix
    assert np.abs(run(converted) - reference).max() < 0.05 * np.abs(reference).max()
