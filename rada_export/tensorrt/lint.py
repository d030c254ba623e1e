"""A lint of ONNX graphs against the documented rules of TensorRT's ONNX parser. No TensorRT, no GPU.

Each rule below names its source. The operator table and opset ranges are :mod:`.ops`
(onnx_ops.txt); this module adds what the parser and the builder reject beyond op names: types
(uint8, bool, int8), the form of Q/DQ nodes, dynamic dimensions without a profile range, the 2 GB
protobuf limit and external data, and attributes the parser refuses for operators rada-export uses.

Sources:
- OPS_MD: onnx/onnx-tensorrt docs/operators.md, TensorRT 10.x table ("Supported Types",
  "Restrictions", and the notes "UINT8 is only supported as network input or output tensor types",
  "INT8 ... support is available only through quantization").
  https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md
- PARSER: onnx/onnx-tensorrt ModelImporter.cpp, parseNode: a node output of type UINT8 that is not
  a graph output (nor a Constant) fails with "TensorRT does not support UINT8 types for
  intermediate tensors". https://github.com/onnx/onnx-tensorrt/blob/main/ModelImporter.cpp
- DATATYPE: TensorRT Python API, tensorrt.DataType.UINT8: uint8 network inputs are converted to
  float32/float16 before any other layer; uint8 conversions exist only to and from float32/float16.
  https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/FoundationalTypes/DataType.html
- QUANT: TensorRT developer guide, "Working with Quantized Types" / explicit quantization:
  symmetric INT8 (zero point 0), positive constant scales, per-tensor activations, per-channel
  weights along one axis. https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/work-quantized-types.html
- SHAPES: TensorRT developer guide, "Working with Dynamic Shapes": every dynamic input dimension
  needs an optimisation profile range. https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/work-dynamic-shapes.html
- IMPORTER: onnx/onnx-tensorrt onnxOpImporters.cpp (importResize and others): what the importer
  actually reads. https://github.com/onnx/onnx-tensorrt/blob/main/onnxOpImporters.cpp
- PROTOBUF: ONNX "External Data" doc: a ModelProto cannot exceed 2 GB; larger weights go to external
  files beside the model, which parse_from_file finds by relative path.
  https://github.com/onnx/onnx/blob/main/docs/ExternalData.md
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from rada_export.errors import RadaError

from .ops import DEFAULT_TARGET, check_ops, load_supported_ops

# Symbolic input dimensions that `rada-export trt` gives a profile range (rada_export.tensorrt.plan.plan_build).
PROFILE_DIMS = ("batch", "num_classes", "num_texts")
PROTOBUF_LIMIT = 2**31  # bytes

OPS_MD = "https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md"
PARSER = "https://github.com/onnx/onnx-tensorrt/blob/main/ModelImporter.cpp (parseNode)"
DATATYPE = "https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/FoundationalTypes/DataType.html"
QUANT = "https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/work-quantized-types.html"
SHAPES = "https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/work-dynamic-shapes.html"
PROTOBUF = "https://github.com/onnx/onnx/blob/main/docs/ExternalData.md"
IMPORTER = "https://github.com/onnx/onnx-tensorrt/blob/main/onnxOpImporters.cpp"

RULES = {
    "operator": OPS_MD,  # op type absent from the table, or newer than the target
    "opset": OPS_MD,  # opset outside the release's range
    "parser-restriction": OPS_MD,  # constant axes, LayerNormalization outputs, Q/DQ zero points (ops.py)
    "uint8-intermediate": PARSER,
    "uint8-input-cast": DATATYPE,
    "uint8-output": DATATYPE,
    "cast-types": DATATYPE,
    "bool": OPS_MD,
    "int8": OPS_MD,
    "qdq": QUANT,
    "dynamic-dims": SHAPES,
    "protobuf-2gb": PROTOBUF,
    "external-data": PROTOBUF,
    "attribute": IMPORTER,  # and OPS_MD's Restrictions column
    "operator-dtype": OPS_MD,  # FLOAT_ONLY_OPS below
}

# OPS_MD "Supported Types" lists BOOL for these operators only (BOOL inputs elsewhere are rejected).
BOOL_OPS = frozenset({
    "And", "Or", "Xor", "Not", "Cast", "CastLike", "Concat", "Constant", "ConstantOfShape", "Expand", "EyeLike", "Flatten",
    "Gather", "GatherElements", "GatherND", "Identity", "If", "Loop", "OneHot", "Reshape", "ReverseSequence", "Shape",
    "Size", "Slice", "Split", "Squeeze", "Tile", "Transpose", "Trilu", "Unsqueeze", "Where",
})
# OPS_MD: Cast / CastLike types (INT8 is a quantized type only; DOUBLE is cast down with a warning).
CAST_TYPES = frozenset({"FLOAT", "FLOAT16", "BFLOAT16", "INT32", "INT64", "UINT8", "BOOL", "DOUBLE"})
FLOATS = frozenset({"FLOAT", "FLOAT16"})
# OPS_MD, TensorRT 10.x table, "Supported Types": these list floating-point types only (FP32, FP16,
# BF16; Gemm and Clip also INT8, which is the quantized path the int8 rule covers), so an integer
# input (e.g. MatMul on INT64 shape arithmetic, Softmax on INT32) is refused by the parser or the
# builder. The 8.5 table (onnx-tensorrt docs/operators.md at 6d0ab7be) lists the same float-only types.
# Value: the input positions that carry data (Clip's min/max have the data's type).
FLOAT_ONLY_OPS = {"MatMul": (0, 1), "Gemm": (0, 1, 2), "Softmax": (0,), "LogSoftmax": (0,), "Clip": (0, 1, 2), "Erf": (0,)}
FLOAT_TYPES = frozenset({"FLOAT", "FLOAT16", "BFLOAT16", "DOUBLE"})  # DOUBLE: cast down to FLOAT (OPS_MD note)
OTHER_RULES_TYPES = frozenset({"INT8", "UINT8", "BOOL"})  # the int8, uint8 and bool rules report these
RESIZE_MODES = frozenset({"nearest", "linear", "cubic"})
RESIZE_COORDS = frozenset({"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"})


@dataclass(frozen=True)
class Finding:
    graph: str
    node: str
    rule: str
    problem: str
    fix: str

    def line(self) -> str:
        return f"{self.graph}: {self.node}: [{self.rule}] {self.problem} -- fix: {self.fix}"

    def to_dict(self) -> dict[str, str]:
        return {"graph": self.graph, "node": self.node, "rule": self.rule, "problem": self.problem, "fix": self.fix,
                "source": RULES.get(self.rule, "")}


@dataclass
class LintReport:
    target: str
    graphs: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "ok": self.ok, "graphs": self.graphs,
                "findings": [f.to_dict() for f in self.findings], "notes": self.notes}


def _type_name(elem_type: int) -> str:
    import onnx

    return onnx.TensorProto.DataType.Name(elem_type) if elem_type else "UNDEFINED"


def _types(model) -> dict[str, str]:
    """Element type of every tensor name the graph defines (inputs, outputs, initializers, inferred values)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # a graph ONNX itself cannot type; the parser will say more
        inferred = model
    types: dict[str, str] = {}
    graph = inferred.graph
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            types[value.name] = _type_name(value.type.tensor_type.elem_type)
    for init in graph.initializer:
        types[init.name] = _type_name(init.data_type)
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = _type_name(attr.t.data_type)
        elif node.op_type == "Cast":
            to = next((a.i for a in node.attribute if a.name == "to"), 0)
            types.setdefault(node.output[0], _type_name(to))
    return types


def _label(node) -> str:
    return f"{node.op_type} {node.name or (node.output[0] if node.output else '?')!r}"


def _attr(node, name: str, default: Any = None) -> Any:
    from onnx import helper

    for attr in node.attribute:
        if attr.name == name:
            value = helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _type_rules(model, graph_name: str, types: Mapping[str, str]) -> list[Finding]:
    findings = []
    graph = model.graph
    graph_inputs = {v.name for v in graph.input}
    graph_outputs = {v.name for v in graph.output}
    initializers = {t.name for t in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    producers: dict[str, Any] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
        for name in node.output:
            producers[name] = node

    for node in graph.node:
        label = _label(node)
        # PARSER: a UINT8 node output must be a graph output (Constants aside).
        for out in node.output:
            no_zero_point = node.op_type == "QuantizeLinear" and (len(node.input) < 3 or not node.input[2])  # INT8 in TensorRT (ops.py)
            if out and types.get(out) == "UINT8" and out not in graph_outputs and node.op_type != "Constant" and not no_zero_point:
                findings.append(Finding(graph_name, label, "uint8-intermediate",
                                        f"produces the uint8 tensor {out!r}; TensorRT takes uint8 only as a network input or output",
                                        "cast the uint8 input to float first (Cast to FLOAT/FLOAT16 as the first node), then transpose/resize"))
        # OPS_MD: only Cast/CastLike take UINT8; DATATYPE: and only to float32/float16.
        for index, name in enumerate(node.input):
            t = types.get(name)
            if t == "UINT8" and node.op_type not in ("Cast", "CastLike") and name in graph_inputs:
                findings.append(Finding(graph_name, label, "uint8-input-cast",
                                        f"takes the uint8 input {name!r}; a uint8 network input must feed only a Cast to float32/float16",
                                        "make Cast(to=FLOAT) the only consumer of the uint8 input"))
            if t == "BOOL" and node.op_type not in BOOL_OPS:
                findings.append(Finding(graph_name, label, "bool",
                                        f"takes the bool tensor {name!r}; TensorRT's {node.op_type} does not take BOOL",
                                        "cast the bool tensor to the type the operator takes (Cast to FLOAT or INT32)"))
            zero_point = node.op_type in ("QuantizeLinear", "DequantizeLinear") and index == 2
            if t == "INT8" and node.op_type != "DequantizeLinear" and not zero_point and name not in graph_inputs:
                findings.append(Finding(graph_name, label, "int8",
                                        f"takes the int8 tensor {name!r}; TensorRT handles INT8 only as a quantized type (QuantizeLinear -> DequantizeLinear)",
                                        "feed int8 tensors only to DequantizeLinear"))
        for index in FLOAT_ONLY_OPS.get(node.op_type, ()):
            t = types.get(node.input[index]) if index < len(node.input) and node.input[index] else None
            if t is not None and t not in FLOAT_TYPES and t not in OTHER_RULES_TYPES:
                findings.append(Finding(graph_name, label, "operator-dtype",
                                        f"takes the {t} tensor {node.input[index]!r}; TensorRT's {node.op_type} takes floating-point types only",
                                        f"cast the input to FLOAT before the {node.op_type} (and back after it, if integers are needed)"))
        if node.op_type == "Cast":
            src = types.get(node.input[0]) if node.input else None
            dst = _type_name(_attr(node, "to", 0))
            if dst not in CAST_TYPES:
                findings.append(Finding(graph_name, label, "cast-types", f"casts to {dst}, which TensorRT's Cast does not produce",
                                        "cast to FLOAT, FLOAT16, INT32, INT64 or BOOL"))
            elif "UINT8" in (src, dst) and src != dst and not ({src, dst} - {"UINT8"}) <= FLOATS:
                findings.append(Finding(graph_name, label, "cast-types", f"casts {src} to {dst}; TensorRT converts uint8 only to and from float32/float16",
                                        "cast uint8 to FLOAT (or FLOAT16) and go on from there"))
    for value in graph.input:
        name = value.name
        if name in initializers:
            continue
        t = types.get(name)
        if t == "INT8":
            findings.append(Finding(graph_name, "input " + repr(name), "int8", "an int8 network input; TensorRT takes INT8 only inside Q/DQ pairs",
                                    "make the input float32 (or uint8 frames) and quantize inside the graph"))
    for value in graph.output:
        if types.get(value.name) == "UINT8":
            producer = producers.get(value.name)
            src = types.get(producer.input[0]) if producer is not None and producer.input else None
            if producer is None or producer.op_type != "Cast" or src not in FLOATS:
                findings.append(Finding(graph_name, "output " + repr(value.name), "uint8-output",
                                        "a uint8 network output that is not a Cast from float32/float16",
                                        "end the graph with Cast(to=UINT8) of a float tensor, or output float"))
    return findings


def _qdq_rules(model, graph_name: str, types: Mapping[str, str], base_dir: Path | None) -> list[Finding]:
    import numpy as np
    from onnx import numpy_helper

    findings = []
    inits = {t.name: t for t in model.graph.initializer}
    constants = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}

    def value_of(name: str):
        if name in inits:
            tensor = inits[name]
            if tensor.data_location == tensor.EXTERNAL:
                return numpy_helper.to_array(tensor, str(base_dir)) if base_dir is not None else None
            return numpy_helper.to_array(tensor)
        if name in constants:
            attr = next((a for a in constants[name].attribute if a.name == "value"), None)
            return numpy_helper.to_array(attr.t) if attr is not None else None
        return None

    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        label = _label(node)
        if len(node.input) < 2:
            continue
        scale_name = node.input[1]
        if scale_name not in inits and scale_name not in constants:
            findings.append(Finding(graph_name, label, "qdq", f"its scale {scale_name!r} is computed; TensorRT needs a constant scale",
                                    "store scales as initializers (rada-export calibrate does)"))
            continue
        scale = value_of(scale_name)
        if scale is not None:
            scale = np.asarray(scale)
            if scale.dtype.kind != "f" or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
                findings.append(Finding(graph_name, label, "qdq", "its scale is not all positive finite floats",
                                        "recalibrate (rada-export calibrate)"))
        quantized = node.output[0] if node.op_type == "QuantizeLinear" else node.input[0]
        qtype = types.get(quantized)
        # Without a zero point ONNX types the result uint8, but TensorRT's importer quantizes to INT8 (ops.py).
        no_zero_point = len(node.input) < 3 or not node.input[2]
        if qtype is not None and qtype != "INT8" and not (no_zero_point and qtype == "UINT8"):
            findings.append(Finding(graph_name, label, "qdq", f"quantizes to {qtype}; rada-export's TensorRT path takes symmetric INT8 only",
                                    "quantize to int8 with zero point 0 (a zero point of type int8)"))
        data = node.input[0]
        per_channel = scale is not None and scale.size > 1
        if per_channel:
            weight = value_of(data) if node.op_type == "DequantizeLinear" else None
            if node.op_type == "QuantizeLinear" and data not in inits:
                findings.append(Finding(graph_name, label, "qdq", "quantizes an activation per channel; TensorRT quantizes activations per tensor",
                                        "use one scale for activations (per-channel scales are for weights)"))
            elif weight is not None:
                axis = int(_attr(node, "axis", 1))
                shape = np.asarray(weight).shape
                if not -len(shape) <= axis < len(shape) or shape[axis] != scale.size:
                    findings.append(Finding(graph_name, label, "qdq",
                                            f"has {scale.size} scales along axis {axis} of a weight shaped {shape}",
                                            "give one scale per output channel along the weight's channel axis"))
    return findings


def _constant_floats(model, name: str) -> list[float] | None:
    from onnx import numpy_helper

    for tensor in model.graph.initializer:
        if tensor.name == name and tensor.data_location != tensor.EXTERNAL:
            return [float(v) for v in numpy_helper.to_array(tensor).ravel()]
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] == name:
            attr = next((a for a in node.attribute if a.name == "value"), None)
            return [float(v) for v in numpy_helper.to_array(attr.t).ravel()] if attr is not None else None
    return None


def _attribute_rules(model, graph_name: str) -> list[Finding]:
    """Attributes OPS_MD's "Restrictions" column rejects, for operators rada-export's graphs use or may use."""
    findings = []
    for node in model.graph.node:
        label, op = _label(node), node.op_type
        if op == "Resize":
            # IMPORTER: onnxOpImporters.cpp importResize maps nearest/linear/cubic, rejects the coordinate
            # modes half_pixel_symmetric and tf_crop_and_resize, and limits constant scales to the last
            # 3 axes (linear) or 2 axes (cubic). It never reads `antialias`: an antialiased Resize parses
            # and then runs WITHOUT antialiasing (OPS_MD: "Antialiasing is not supported").
            mode = _attr(node, "mode", "nearest")
            if mode not in RESIZE_MODES:
                findings.append(Finding(graph_name, label, "attribute", f"Resize mode {mode!r}; TensorRT's parser takes nearest, linear and cubic",
                                        "resize with mode='linear' or 'cubic'"))
            if int(_attr(node, "antialias", 0) or 0):
                findings.append(Finding(graph_name, label, "attribute",
                                        "Resize with antialias=1; TensorRT's parser ignores antialias, so the engine would resize "
                                        "without it and disagree with ONNX Runtime and PIL",
                                        "resize on the host, or use a Resize without antialias (e.g. a box/area prefilter as a strided Conv first)"))
            coords = _attr(node, "coordinate_transformation_mode", "half_pixel")
            if coords not in RESIZE_COORDS:
                findings.append(Finding(graph_name, label, "attribute", f"Resize coordinate_transformation_mode {coords!r} is not supported",
                                        f"use one of {', '.join(sorted(RESIZE_COORDS))}"))
            if _attr(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
                findings.append(Finding(graph_name, label, "attribute", "Resize keep_aspect_ratio_policy other than 'stretch'",
                                        "use the default policy 'stretch'"))
            scales = _constant_floats(model, node.input[2]) if len(node.input) > 2 and node.input[2] else None
            inner = {"linear": 3, "cubic": 2}.get(mode)
            if scales is not None and inner is not None and any(abs(v - 1.0) > 1e-12 for v in scales[: max(0, len(scales) - inner)]):
                findings.append(Finding(graph_name, label, "attribute",
                                        f"{mode} Resize scales {list(scales)} change an axis before the last {inner}; TensorRT resizes only those",
                                        f"resize only the last {inner} axes (e.g. NCHW: H and W)"))
        elif op == "Constant":
            used = {a.name for a in node.attribute} & {"sparse_value", "value_string", "value_strings"}
            if used:
                findings.append(Finding(graph_name, label, "attribute", f"Constant with {', '.join(sorted(used))}, which the parser does not take",
                                        "store a dense numeric tensor"))
        elif op in ("MaxPool", "AveragePool", "LpPool"):
            dilations = _attr(node, "dilations", None)
            if dilations and any(int(d) != 1 for d in dilations):
                findings.append(Finding(graph_name, label, "attribute", f"{op} with dilations {list(dilations)}", "use dilations of 1"))
            if op == "MaxPool" and len(node.output) > 1 and node.output[1]:
                findings.append(Finding(graph_name, label, "attribute", "MaxPool's Indices output is not supported", "drop the Indices output"))
        elif op == "ScatterND" and _attr(node, "reduction", "none") != "none":
            findings.append(Finding(graph_name, label, "attribute", "ScatterND with a reduction", "use reduction='none'"))
        elif op == "Dropout" and len(node.input) > 2 and node.input[2]:
            findings.append(Finding(graph_name, label, "attribute", "Dropout with a training_mode input", "export in eval mode (no training_mode input)"))
    return findings


def _dim_rules(model, graph_name: str, profile_dims: Iterable[str], manifest_inputs: Mapping[str, list] | None) -> list[Finding]:
    findings = []
    known = set(profile_dims)
    initializers = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = list(value.type.tensor_type.shape.dim) if value.type.tensor_type.HasField("shape") else None
        where = "input " + repr(value.name)
        if dims is None:
            findings.append(Finding(graph_name, where, "dynamic-dims", "has no shape (unknown rank); TensorRT needs the rank",
                                    "re-export with a declared input shape"))
            continue
        for axis, dim in enumerate(dims):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                continue
            if not dim.HasField("dim_param") or not dim.dim_param:
                findings.append(Finding(graph_name, where, "dynamic-dims", f"axis {axis} is dynamic without a name, so no profile can cover it",
                                        "re-export with a named dynamic axis (batch, num_classes or num_texts)"))
            elif dim.dim_param not in known:
                findings.append(Finding(graph_name, where, "dynamic-dims",
                                        f"axis {axis} is the dynamic dimension {dim.dim_param!r}, which `rada-export trt` has no profile range for",
                                        f"re-export so that dynamic axes are named {', '.join(sorted(known))}"))
        if manifest_inputs is not None and value.name in manifest_inputs:
            declared = [d.dim_param if d.HasField("dim_param") and d.dim_param else int(d.dim_value) for d in dims]
            if [str(d) for d in declared] != [str(d) for d in manifest_inputs[value.name]]:
                findings.append(Finding(graph_name, where, "dynamic-dims",
                                        f"has shape {declared} in the graph but {manifest_inputs[value.name]} in the manifest",
                                        "re-export the bundle (graph and manifest disagree)"))
    return findings


def _size_rules(model, graph_name: str, path: Path | None) -> list[Finding]:
    findings = []
    if path is not None and path.stat().st_size >= PROTOBUF_LIMIT:
        findings.append(Finding(graph_name, "file", "protobuf-2gb",
                                f"{path.name} is {path.stat().st_size / 2**30:.2f} GiB in one protobuf; protobuf cannot read 2 GB or more",
                                "store the weights as external data (onnx.save(..., save_as_external_data=True))"))
    base = path.parent if path is not None else None
    seen: dict[str, int] = {}
    for tensor in model.graph.initializer:
        if tensor.data_location != tensor.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        where = f"initializer {tensor.name!r}"
        if not location or os.path.isabs(location) or ".." in Path(location).parts:
            findings.append(Finding(graph_name, where, "external-data", f"its external data location {location!r} is not a plain file name beside the graph",
                                    "re-save the graph with external data in the same folder"))
            continue
        if base is None:
            continue
        data = base / location
        if data.name not in seen:
            seen[data.name] = data.stat().st_size if data.is_file() else -1
        size = seen[data.name]
        if size < 0:
            findings.append(Finding(graph_name, where, "external-data", f"its weights file {location} is missing beside {path.name}",
                                    "copy the .onnx.data file with the graph"))
            continue
        end = int(info.get("offset", 0) or 0) + int(info.get("length", 0) or 0)
        if end > size:
            findings.append(Finding(graph_name, where, "external-data", f"{location} is shorter ({size} bytes) than the tensor needs ({end})",
                                    "copy the .onnx.data file again in full"))
    return findings


ONNX_FIX = ("pip install onnx, or the extra that brings it: pip install 'rada-export[jetson]' on a Jetson "
            "(JetPack's TensorRT stays as it is), 'rada-export[trt]' elsewhere")


def require_onnx(purpose: str = "the TensorRT check of a bundle's graphs") -> None:
    """One RadaError naming onnx and the extra when the onnx package is missing (a device install may lack it)."""
    import importlib.util

    if importlib.util.find_spec("onnx") is None:
        raise RadaError(f"{purpose} reads the ONNX graphs with the onnx package, which is not installed", ONNX_FIX)


def lint_model(
    model_or_path: Any,
    graph_name: str = "graph",
    trt_version: str = DEFAULT_TARGET,
    *,
    profile_dims: Iterable[str] = PROFILE_DIMS,
    manifest_inputs: Mapping[str, list] | None = None,
) -> list[Finding]:
    """Every rule of this module and of :func:`.ops.check_ops` on one graph (a path or a ModelProto)."""
    import onnx

    path = None
    if isinstance(model_or_path, onnx.ModelProto):
        model = model_or_path
    else:
        path = Path(model_or_path)
        if not path.is_file():
            raise RadaError(f"ONNX graph {path} does not exist", "re-export the bundle")
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as err:
            return [Finding(graph_name, "file", "protobuf-2gb" if path.stat().st_size >= PROTOBUF_LIMIT else "operator",
                            f"{path.name} is not a readable ONNX graph ({str(err).splitlines()[0][:160]})",
                            "re-export the bundle (the file may be truncated)")]
    base = path.parent if path is not None else None
    findings: list[Finding] = []
    ops = check_ops(model, trt_version, load_supported_ops())
    for op, count in ops.unsupported.items():
        findings.append(Finding(graph_name, op, "operator",
                                f"{count} node{'s' if count > 1 else ''} of an operator TensorRT {trt_version}'s ONNX parser does not import",
                                "re-export without it, or target a TensorRT that has it (see rada_export/tensorrt/onnx_ops.txt)"))
    for problem in ops.problems:
        rule = "opset" if problem.startswith("opset") or "opset" in problem.split(":")[0] else "parser-restriction"
        node = problem.split(":")[0] if ":" in problem else "graph"
        findings.append(Finding(graph_name, node, rule, problem,
                                "re-export at opset 18 (`rada-export onnx --opset 18`)" if rule == "opset" else "re-export the bundle with this rada-export"))
    types = _types(model)
    findings += _type_rules(model, graph_name, types)
    findings += _qdq_rules(model, graph_name, types, base)
    findings += _attribute_rules(model, graph_name)
    findings += _dim_rules(model, graph_name, profile_dims, manifest_inputs)
    findings += _size_rules(model, graph_name, path)
    return findings


def lint_bundle(bundle: str | os.PathLike, trt_version: str = DEFAULT_TARGET, graphs: Iterable[str] | None = None) -> LintReport:
    """Lints every graph the bundle's manifest lists (or only ``graphs``) for TensorRT ``trt_version``."""
    from rada_export.runtimes.manifest import read_manifest

    bundle = Path(bundle)
    if not bundle.is_dir():
        raise RadaError(f"bundle {bundle} does not exist", "pass the folder written by `rada-export onnx --out`")
    require_onnx()
    manifest = read_manifest(bundle)
    report = LintReport(target=trt_version)
    supported = load_supported_ops()
    from rada_export.runtimes.trt_environment import parse_version

    if parse_version(trt_version) > supported.newest_known:
        report.notes.append(f"TensorRT {trt_version} is newer than the operator list; operators it added later count as unsupported")
    for key, entry in sorted(manifest.graphs.items()):
        if graphs is not None and key not in set(graphs):
            continue
        report.graphs.append(key)
        dims = PROFILE_DIMS + (tuple(manifest.frames.ranges()) if manifest.frames is not None else ())
        report.findings += lint_model(bundle / entry.file, key, trt_version, profile_dims=dims, manifest_inputs=entry.inputs)
    return report


__all__ = ["Finding", "LintReport", "ONNX_FIX", "PROFILE_DIMS", "RULES", "lint_bundle", "lint_model", "require_onnx"]
