"""Which nodes of a graph go to INT8, and an audit of where the Q/DQ nodes ended up.

The recipe quantizes only the weight-bearing Linear layers of the image encoder's transformer:
MatMul or Gemm nodes inside its module scope whose second input is a constant weight. Everything
the field keeps in float stays out by construction: the attention's activation-by-activation
MatMuls (their second input is not a weight, so neither Softmax input nor output is touched), the
patch embedding Conv, LayerNorm, the final projection and L2 normalisation (outside the transformer
scope), the in-graph preprocessing and the RAda head.

Node scopes come from the TorchScript exporter, which prefixes node names with the module path
(``/encoder/visual/transformer/resblocks.0/mlp/c_fc/MatMul``); the dynamo exporter names nodes
``node_MatMul_24`` and lists the module path in node metadata instead, which is read as well.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

import onnx

LINEAR_OP_TYPES = ("MatMul", "Gemm")
# The image encoder's transformer: the fused graph nests it under /encoder/.
TRANSFORMER_SCOPE = "/visual/transformer/"
# Where torch.onnx's dynamo exporter lists a node's module paths: "['', 'visual', 'visual.transformer', ...]".
_NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
# Op types whose inputs and outputs must stay float (no DequantizeLinear in, no QuantizeLinear out).
FLOAT_OP_TYPES = ("Softmax", "Conv", "LayerNormalization", "ReduceL2")
# Scopes that must stay float as a whole: the head, the L2 normalisation, the preprocessing.
FLOAT_SCOPES = ("/head/", "image_norm/", "/preprocess/")
QDQ_OP_TYPES = ("QuantizeLinear", "DequantizeLinear")


def node_scope(node: onnx.NodeProto) -> str:
    """The node's module path as far as the graph records it: its name, then dynamo's metadata
    written the TorchScript way (``/visual/transformer/resblocks/0/attn/``)."""
    parts = [node.name]
    for prop in node.metadata_props:
        if prop.key != _NAME_SCOPES_KEY:
            continue
        try:
            scopes = ast.literal_eval(prop.value)
        except (ValueError, SyntaxError):
            continue
        paths = [p for p in scopes if isinstance(p, str)] if isinstance(scopes, (list, tuple)) else []
        if paths:
            # The entries grow one module at a time; the longest is the full path.
            parts.append("/" + max(paths, key=len).replace(".", "/") + "/")
    return " ".join(parts)


def constant_names(model: onnx.ModelProto) -> set[str]:
    """Names of the graph's constant tensors: initializers and Constant node outputs (weights are among them)."""
    names = {init.name for init in model.graph.initializer}
    names |= {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}
    return names


def is_weight_bearing_linear(node: onnx.NodeProto, constants: set[str]) -> bool:
    return (
        node.op_type in LINEAR_OP_TYPES
        and len(node.input) >= 2
        and node.input[0] not in constants
        and node.input[1] in constants
    )


def select_linear_nodes(model: onnx.ModelProto, scope: str = TRANSFORMER_SCOPE) -> list[str]:
    """Names of the weight-bearing MatMul/Gemm nodes inside ``scope``, in graph order."""
    constants = constant_names(model)
    return [
        node.name for node in model.graph.node
        if is_weight_bearing_linear(node, constants) and scope in node_scope(node)
    ]


@dataclass
class QdqAudit:
    """Where the Q/DQ nodes of a quantized graph sit, and every way they break the recipe."""

    quantized_nodes: list[str] = field(default_factory=list)  # nodes reading at least one DQ output
    weight_dq: int = 0  # DequantizeLinear nodes on constant (weight) tensors
    activation_dq: int = 0
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


def _attribute(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def audit_qdq(model: onnx.ModelProto, allowed: set[str]) -> QdqAudit:
    """Checks a Q/DQ graph against the recipe; ``allowed`` holds the names meant to be quantized.

    Rules: every Q/DQ is int8 with zero point 0; weight DQs are per-channel; only allowed nodes read
    DQ outputs; no float-only op (Softmax, Conv, LayerNorm, L2 norm) reads a DQ output or feeds a
    QuantizeLinear, except a LayerNorm whose output is the input of an allowed Linear layer (that
    quantization belongs to the Linear layer); nothing in the head, normalisation or preprocessing
    scopes touches a Q/DQ node; no int32 (bias) quantization anywhere.
    """
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    constants = constant_names(model)
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    audit = QdqAudit()

    def linear_targets(q: onnx.NodeProto) -> list[onnx.NodeProto]:
        return [c for dq in consumers.get(q.output[0], []) for c in consumers.get(dq.output[0], [])]

    for node in graph.node:
        if node.op_type in QDQ_OP_TYPES:
            audit.violations += _check_qdq_params(node, inits)
            continue
        reads_dq = [name for name in node.input if name in producer and producer[name].op_type == "DequantizeLinear"]
        if reads_dq:
            audit.quantized_nodes.append(node.name)
            if node.name not in allowed:
                audit.violations.append(f"{node.op_type} {node.name} reads a dequantized tensor but is not in the recipe")
        scope = node_scope(node)
        if node.op_type not in FLOAT_OP_TYPES and not any(s in scope for s in FLOAT_SCOPES):
            continue
        for out in node.output:
            for q in (c for c in consumers.get(out, []) if c.op_type == "QuantizeLinear"):
                targets = linear_targets(q)
                # A LayerNorm or Conv feeding only selected layers: that quantization belongs to those layers.
                into_linear = node.op_type in ("LayerNormalization", "Conv") and targets and all(t.name in allowed for t in targets)
                if not into_linear:
                    audit.violations.append(f"{node.op_type} {node.name}: its output {out} is quantized")
    for node in graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        source = node.input[0]
        upstream = producer.get(source)
        weight = source in constants or (upstream is not None and upstream.op_type == "QuantizeLinear"
                                         and upstream.input[0] in constants)
        if weight:
            audit.weight_dq += 1
            scale = inits.get(node.input[1])
            if scale is None or len(scale.dims) != 1 or _attribute(node, "axis") is None:
                audit.violations.append(f"weight DequantizeLinear {node.name} is not per-channel")
        else:
            audit.activation_dq += 1
    return audit


def _check_qdq_params(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> list[str]:
    problems = []
    if len(node.input) < 3 or node.input[2] not in inits:
        return [f"{node.op_type} {node.name} has no constant zero point"]
    zero_point = inits[node.input[2]]
    if zero_point.data_type != onnx.TensorProto.INT8:
        kind = onnx.helper.tensor_dtype_to_np_dtype(zero_point.data_type).name
        problems.append(f"{node.op_type} {node.name} quantizes to {kind}, not int8")
    if onnx.numpy_helper.to_array(zero_point).any():
        problems.append(f"{node.op_type} {node.name} has a non-zero zero point")
    return problems


def confine_qdq(model: onnx.ModelProto, allowed: set[str]) -> onnx.ModelProto:
    """Rewires every node outside ``allowed`` that reads an activation's DequantizeLinear output back
    to the float tensor; returns the model (changed in place).

    onnxruntime's quantizer makes all readers of a quantized activation read its DQ output, so a
    Shape or a residual Add sharing the input of a Linear layer would otherwise see int8-rounded
    values: the recipe wants INT8 only where the Linear layers read.
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    float_source = {}
    for node in graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        q = producer.get(node.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            float_source[node.output[0]] = q.input[0]
    for node in graph.node:
        if node.name in allowed or node.op_type in QDQ_OP_TYPES:
            continue
        for i, name in enumerate(node.input):
            if name in float_source:
                node.input[i] = float_source[name]
    return _drop_dead_qdq(model)


def _drop_dead_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """Removes Q/DQ nodes nothing reads any more (after rewiring: e.g. the Q the quantizer put on a
    Conv's output for a ReLU that now reads the float tensor)."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    while True:
        read = {name for node in graph.node for name in node.input} | outputs
        dead = [n for n in graph.node if n.op_type in QDQ_OP_TYPES and not any(o in read for o in n.output)]
        if not dead:
            return model
        for node in dead:
            graph.node.remove(node)
