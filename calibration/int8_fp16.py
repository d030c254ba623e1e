"""The INT8 graph for TensorRT: the Q/DQ graph with everything that is not quantized in FP16.

Under strong typing TensorRT runs every tensor in the type the graph gives it. A Q/DQ graph
quantized from the FP32 graph therefore runs its non-quantized parts (attention's BMMs and Softmax,
GELU, residual adds, the unquantized Linear layers) in FP32/TF32, and such an INT8 engine can be
slower than the FP16 one. NVIDIA's own ONNX flow (TensorRT Model Optimizer, ``modelopt.onnx.
quantization`` with its default ``high_precision_dtype="fp16"``) quantizes, then converts the rest of
the graph to FP16, with the Q/DQ scales in FP16 as well (an FP16 scale needs opset 19).

This module does the same, reusing the FP16 graph's rules and conversion (``rada_export.export.fp16``,
which needs only onnx and numpy, so a device without torch calibrates too): what the FP16 graph keeps
in FP32 (LayerNorm, the L2 norms, the preprocessing and the RAda head) stays FP32 here. The Q/DQ nodes take FP16 scales and FP16 inputs; their int8 zero points are unchanged, so the
quantization recipe (symmetric, per-channel weights, zero point 0) is the calibrated one.

ONNX Runtime on the CPU runs the FP32-based Q/DQ graph faster (benchmarks/bench_int8.py), so a
bundle carries both: ``<graph>.int8`` for ONNX Runtime, ``<graph>.int8_fp16`` for TensorRT.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from rada_export.errors import RadaError
from rada_export.export import fp16
from rada_export.export.onnx_io import TWO_GB, check_graph, inline_small_tensors, load_graph, read_tensor, save_graph

# QuantizeLinear/DequantizeLinear take an FP16 scale from opset 19 (opset 13 allows float32 only).
# Between 18 and 19 the other ops our graphs use (Cast, Reshape, Shape, Pad, Resize, Equal,
# Identity, Constant) only gained types or attributes whose defaults keep the opset-18 meaning,
# so moving the default domain to 19 changes no node's semantics.
FP16_QDQ_OPSET = 19
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
SUFFIX = "int8_fp16"  # manifest key "<graph>.int8_fp16"
NOTES = ("explicit Q/DQ over FP16 (for TensorRT, strongly typed): the INT8 recipe's Q/DQ with FP16 scales (opset 19); "
         "LayerNorm, L2 normalisation, preprocessing and the RAda head in FP32, everything else FP16")


@dataclass(frozen=True)
class QdqTypeAudit:
    qdq_nodes: int
    fp16_scales: int
    violations: list[str]


def with_opset(model: onnx.ModelProto, version: int) -> onnx.ModelProto:
    """A copy whose default-domain opset is at least ``version``."""
    return _raise_opset(_copy(model), version)


def _raise_opset(model: onnx.ModelProto, version: int) -> onnx.ModelProto:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < version:
            opset.version = version
    return model


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def raise_tiny_scales(model: onnx.ModelProto, base_dir: Path | None = None) -> tuple[onnx.ModelProto, int]:
    """A copy whose Q/DQ scales are at least FP16's smallest normal number, and how many were raised.

    Calibration can give a scale below 6.1e-5 (an activation whose range is under 0.008, common in
    convolutional towers), which FP16 holds only as a subnormal, losing its precision. Raising such a
    scale never clips (the range grows) and only coarsens the step; int8 weights behind a raised
    DequantizeLinear are requantized so that they dequantize to the same values as before.
    Weights kept in a .data file are read from ``base_dir``.
    """
    return _raise_tiny_scales_in_place(_copy(model), base_dir)


def _raise_tiny_scales_in_place(model: onnx.ModelProto, base_dir: Path | None) -> tuple[onnx.ModelProto, int]:
    tiny = np.float32(np.finfo(np.float16).tiny)
    inits = {init.name: init for init in model.graph.initializer}
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        if node.op_type in QDQ_OPS and len(node.input) > 1 and node.input[1] in inits:
            users.setdefault(node.input[1], []).append(node)
    raised = 0
    for name, nodes in users.items():
        old = read_tensor(inits[name], base_dir).astype(np.float32)
        if not (np.abs(old) < tiny).any():
            continue
        new = np.where(np.abs(old) < tiny, tiny, old).astype(np.float32)
        for node in nodes:
            weight = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
            if weight is None:
                continue
            q = read_tensor(weight, base_dir)
            ratio = old / new
            if ratio.ndim == 1 and ratio.size > 1:  # per-channel: along the node's axis
                axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % q.ndim
                ratio = ratio.reshape([-1 if d == axis else 1 for d in range(q.ndim)])
            info = np.iinfo(q.dtype)
            requantized = np.clip(np.rint(q.astype(np.float32) * ratio), info.min, info.max).astype(q.dtype)
            weight.CopyFrom(onnx.numpy_helper.from_array(requantized, weight.name))
        inits[name].CopyFrom(onnx.numpy_helper.from_array(new.astype(onnx.helper.tensor_dtype_to_np_dtype(inits[name].data_type)), name))
        raised += int((np.abs(old) < tiny).sum())
    return model, raised


def qdq_to_fp16(model: onnx.ModelProto, inline_limit: int = TWO_GB) -> onnx.ModelProto:
    """The Q/DQ ``model`` (quantized from FP32) with its non-quantized parts in FP16; ``model`` is unchanged."""
    return _qdq_to_fp16_in_place(_copy(model), None)


def _qdq_to_fp16_in_place(model: onnx.ModelProto, base_dir: Path | None) -> onnx.ModelProto:
    model, _ = _raise_tiny_scales_in_place(model, base_dir)
    converted = fp16.convert_in_place(_raise_opset(model, FP16_QDQ_OPSET), base_dir)
    audit = audit_qdq_types(converted)
    if audit.violations:
        raise RadaError(
            "the FP16 INT8 graph has Q/DQ scales of another type than the tensors they quantize: "
            + "; ".join(audit.violations[:5]),
            "this is a bug in rada-export's INT8 conversion: please report it with the bundle's manifest.json")
    return converted


def audit_qdq_types(model: onnx.ModelProto, inline_limit: int = TWO_GB) -> QdqTypeAudit:
    """Checks that every Q/DQ scale has the type of the float tensor on its float side (Q's input,
    DQ's output), as ONNX requires, and that FP16 scales kept their values' precision (no scale in
    FP16's subnormal range)."""
    types = fp16.node_compute_types(model, inline_limit)
    inits = {init.name: init for init in model.graph.initializer}
    value_types = {v.name: v.type.tensor_type.elem_type for v in
                   list(fp16.infer_types(model, inline_limit).graph.value_info) + list(model.graph.output)}
    violations, count, fp16_scales = [], 0, 0
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        count += 1
        scale = inits.get(node.input[1])
        if scale is None:
            violations.append(f"{node.name}: scale {node.input[1]} is not an initializer")
            continue
        float_side = (types.get(node.name) if node.op_type == "QuantizeLinear"
                      else {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16"}.get(
                          value_types.get(node.output[0])))
        scale_type = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16"}.get(scale.data_type)
        if float_side != scale_type:
            violations.append(f"{node.name}: scale {scale_type}, tensor {float_side}")
        if scale.data_type == onnx.TensorProto.FLOAT16:
            fp16_scales += 1
            values = onnx.numpy_helper.to_array(scale).astype(np.float32)
            if (np.abs(values) < np.finfo(np.float16).tiny).any():
                violations.append(f"{node.name}: a scale below FP16's normal range ({float(np.abs(values).min()):.2e})")
    return QdqTypeAudit(qdq_nodes=count, fp16_scales=fp16_scales, violations=violations)


def convert_file(src: Path, dst: Path, external_threshold: int = TWO_GB) -> Path | None:
    """Writes the FP16-based copy of the Q/DQ graph ``src`` to ``dst`` (external data carried both
    ways); returns its data file, or None. The graph is read without its weights (the scales and
    zero points are read in, each weight when it is converted), and the full check runs on the
    written file, so graphs over 2 GB convert."""
    src, dst = Path(src), Path(dst)
    model = inline_small_tensors(load_graph(src, with_weights=False), src.parent)
    converted = _qdq_to_fp16_in_place(model, src.parent)
    data = save_graph(converted, dst, external_threshold, base_dir=src.parent)
    del model, converted
    check_graph(dst)
    return data
