"""FP16 variants of the graphs, with the numerically fragile parts kept in FP32 by casts in the graph.

ViTs lose accuracy when LayerNorm, Softmax or the final L2 normalisation run in FP16 (TensorRT
issues 2709, 4373, 3656). Putting the casts in the graph makes it strongly typed: TensorRT builds it
as written, on 10.x and on 11.x (which has no FP16 builder flag), instead of relying on flags.
The conversion itself is onnxconverter-common's; this module only decides what stays FP32.
"""

from __future__ import annotations

import contextlib
import copy
import warnings

import onnx
from onnxconverter_common import float16

# Op types kept in FP32 wherever they appear.
FP32_OP_TYPES = ("LayerNormalization", "Softmax", "ReduceL2", "ReduceMean", "Pow", "Sqrt", "Erf")
OUTPUT_SCOPE = "/graph_output/"
# Module scopes (the TorchScript exporter prefixes node names with them) kept in FP32 as a whole:
# the L2 normalisations, the in-graph preprocessing, and the RAda head (its joint softmax and mask,
# and only about 1 % of the compute at K = 100).
FP32_SCOPES = ("image_norm/", "text_norm/", "/preprocess/", "/head/", OUTPUT_SCOPE)


def fp32_node_names(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that must stay FP32 (by scope); op types are handled separately."""
    return [n.name for n in model.graph.node if any(scope in n.name for scope in FP32_SCOPES)]


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """An FP16 copy with FP32 inputs and outputs and the fragile ops in FP32."""
    model = isolate_graph_outputs(drop_identity_casts(inline_initializer_aliases(constants_to_initializers(model))))
    with _converter_cast_cleanup_disabled(), warnings.catch_warnings():
        # The converter warns once per weight it clamps to FP16's range: thousands of lines.
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(
            model,
            keep_io_types=True,
            op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + list(FP32_OP_TYPES),
            node_block_list=fp32_node_names(model),
            disable_shape_infer=False,
        )
    return keep_float_outputs(sync_cast_targets(fold_cast_round_trips(converted)), model)


def constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Turns tensor-valued Constant nodes into initializers; returns a new model.

    The converter changes Constant nodes to FP16 without a Cast even when their consumer is kept in
    FP32 (the head's scalar factors, for one), which leaves a type mismatch; initializers it handles.
    """
    model = copy.deepcopy(model)
    graph = model.graph
    for node in list(graph.node):
        if node.op_type != "Constant" or len(node.attribute) != 1 or node.attribute[0].name != "value":
            continue
        tensor = onnx.TensorProto()
        tensor.CopyFrom(node.attribute[0].t)
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        graph.node.remove(node)
    return model


def inline_initializer_aliases(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replaces Identity nodes that alias an initializer by a copy of it; returns a new model.

    The exporter shares equal weights (LayerNorm biases, say) through Identity nodes; the converter
    then types the alias FP16 while the initializer it reads stays FP32 for a blocked LayerNorm.
    """
    model = copy.deepcopy(model)
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    outputs = {o.name for o in graph.output}
    for node in list(graph.node):
        if node.op_type == "Identity" and node.input[0] in initializers and node.output[0] not in outputs:
            alias = onnx.TensorProto()
            alias.CopyFrom(initializers[node.input[0]])
            alias.name = node.output[0]
            graph.initializer.append(alias)
            graph.node.remove(node)
    return model


def sync_cast_targets(model: onnx.ModelProto) -> onnx.ModelProto:
    """Sets each Cast's ``to`` to the type the converter declared for its output (its bug #328)."""
    model = copy.deepcopy(model)
    declared = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    for node in model.graph.node:
        target = _cast_target(node)
        if node.op_type != "Cast" or target not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            continue
        want = declared.get(node.output[0])
        if want in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) and want != target:
            for attr in node.attribute:
                if attr.name == "to":
                    attr.i = want
    return model


def keep_float_outputs(model: onnx.ModelProto, reference: onnx.ModelProto) -> onnx.ModelProto:
    """Makes every output that was FP32 in ``reference`` FP32 again; returns a new model.

    With keep_io_types the converter still ends an output whose producer it kept in FP32 with a
    Cast to FP16; turn that Cast into one to FP32 (or add one) so callers always read FP32.
    """
    model = copy.deepcopy(model)
    was_float = {o.name for o in reference.graph.output if o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    producers = {out: node for node in model.graph.node for out in node.output}
    for out in model.graph.output:
        if out.name not in was_float or out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            continue
        out.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
        node = producers[out.name]
        if node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to":
                    attr.i = onnx.TensorProto.FLOAT
        else:
            internal = f"{out.name}__fp16"
            node.output[list(node.output).index(out.name)] = internal
            model.graph.node.append(onnx.helper.make_node(
                "Cast", [internal], [out.name], to=onnx.TensorProto.FLOAT, name=f"{OUTPUT_SCOPE}{out.name}_to_fp32"))
    return model


def isolate_graph_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Gives every graph output that other nodes also read its own Identity node; returns a new model.

    With keep_io_types the converter rewires graph outputs through a Cast and loses track of their
    internal readers when the producer stays FP32 (the fused graph's image_features feed the head).
    """
    model = copy.deepcopy(model)
    graph = model.graph
    read = {name for node in graph.node for name in node.input}
    for out in graph.output:
        if out.name not in read:
            continue
        internal = f"{out.name}__internal"
        for node in graph.node:
            for i, name in enumerate(node.output):
                if name == out.name:
                    node.output[i] = internal
            for i, name in enumerate(node.input):
                if name == out.name:
                    node.input[i] = internal
        graph.node.append(onnx.helper.make_node("Identity", [internal], [out.name], name=f"{OUTPUT_SCOPE}{out.name}"))
    return model


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    types.update({init.name: init.data_type for init in model.graph.initializer})
    return types


def _rewire(graph: onnx.GraphProto, rename: dict[str, str]) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            while name in rename:  # chains: a removed Cast may read another removed Cast
                name = rename[name]
            node.input[i] = name


def drop_identity_casts(model: onnx.ModelProto) -> onnx.ModelProto:
    """Removes Casts to the type their input already has; returns a new model.

    open_clip's LayerNorm ends in ``x.to(orig_type)``, exported as Cast(to=float) of a float. The
    converter keeps such a Cast's output FP32 while its consumer turns FP16, a type mismatch.
    """
    model = copy.deepcopy(model)
    graph = model.graph
    types = _elem_types(model)
    outputs = {o.name for o in graph.output}
    rename = {}
    for node in list(graph.node):
        if (node.op_type == "Cast" and node.output[0] not in outputs
                and types.get(node.input[0]) == _cast_target(node)):
            rename[node.output[0]] = node.input[0]
            graph.node.remove(node)
    _rewire(graph, rename)
    return model


@contextlib.contextmanager
def _converter_cast_cleanup_disabled():
    # onnxconverter-common's own clean-up of Cast pairs (remove_unnecessary_cast_node, PR #286)
    # crashes with "'list' object has no attribute 'input'" when a Cast feeds several nodes, as in
    # every ViT here; fold_cast_round_trips below does that job instead.
    original = float16.remove_unnecessary_cast_node
    float16.remove_unnecessary_cast_node = lambda graph: None
    try:
        yield
    finally:
        float16.remove_unnecessary_cast_node = original


def _cast_target(node: onnx.NodeProto) -> int | None:
    for attr in node.attribute:
        if attr.name == "to":
            return attr.i
    return None


def fold_cast_round_trips(model: onnx.ModelProto) -> onnx.ModelProto:
    """Removes FP32 -> FP16 -> FP32 Cast pairs the converter leaves between two FP32 nodes.

    Such a pair would round an FP32 value to FP16 for nothing. Consumers of the second Cast read the
    first Cast's input instead; Casts left without consumers are dropped. Returns a new model.
    """
    model = copy.deepcopy(model)
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    graph_outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    for node in graph.node:
        if node.op_type != "Cast" or _cast_target(node) != onnx.TensorProto.FLOAT:
            continue
        upstream = producers.get(node.input[0])
        if upstream is None or upstream.op_type != "Cast" or _cast_target(upstream) != onnx.TensorProto.FLOAT16:
            continue
        if node.output[0] in graph_outputs:
            continue
        rename[node.output[0]] = upstream.input[0]
    if not rename:
        return model
    _rewire(graph, rename)
    # Drop Casts whose outputs nobody reads any more (repeat: removing one can orphan its producer).
    while True:
        used = {name for node in graph.node for name in node.input} | graph_outputs
        dead = [n for n in graph.node if n.op_type == "Cast" and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    live = {name for node in graph.node for name in list(node.input) + list(node.output)}
    for value in list(graph.value_info):
        if value.name not in live:
            graph.value_info.remove(value)
    return model


def node_compute_types(model: onnx.ModelProto) -> dict[str, str]:
    """Node name -> element type ('float32' / 'float16') of its first float input, for checks."""
    types: dict[str, int] = {}
    for value in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        types[value.name] = value.type.tensor_type.elem_type
    for init in model.graph.initializer:
        types[init.name] = init.data_type
    inferred = onnx.shape_inference.infer_shapes(model)
    for value in inferred.graph.value_info:
        types.setdefault(value.name, value.type.tensor_type.elem_type)
    floats = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16"}
    result = {}
    for node in model.graph.node:
        for name in node.input:
            if types.get(name) in floats:
                result[node.name] = floats[types[name]]
                break
    return result
