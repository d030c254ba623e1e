"""FP16 variants of the graphs, with the numerically fragile parts kept in FP32 by casts in the graph.

ViTs lose accuracy when LayerNorm or the final L2 normalisation run in FP16 (TensorRT issues 2709,
4373, 3656). Putting the casts in the graph makes it strongly typed: TensorRT builds it as written,
on 10.x and on 11.x (which has no FP16 builder flag), instead of relying on flags.
The conversion itself is onnxconverter-common's; this module only decides what stays FP32, and
repairs what the converter leaves behind.

Softmax inside attention stays FP16. TensorRT fuses attention when it finds the chain
BMM1 (Q.K^T, Q and/or K pre-scaled) -> optional mask -> Softmax -> BMM2 (.V) on FP16/BF16/FP8 tensors
("Fused Attention", Method 2:
https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/transformers-fused-attention.html;
TensorRT 10.10 and 10.14 release notes widen the patterns it matches). Casts to FP32 around the
Softmax put two foreign layers in that chain and make its tensors FP32 under strong typing, so the
fused (flash) kernel, which keeps the softmax's running sums in FP32 anyway, cannot be used. Any
other Softmax (the RAda head's joint softmax over K*K entries) stays FP32.

Graphs above 2 GB (ViT-H/14, ViT-bigG): protobuf cannot serialise them in memory, so shape
inference runs on a file with external data (``infer_types``), never on the in-memory model.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
import warnings
from pathlib import Path

import onnx
from onnxconverter_common import float16

from .onnx_io import TWO_GB

# Op types kept in FP32 wherever they appear. Softmax is decided per node (attention_softmax_nodes).
FP32_OP_TYPES = ("LayerNormalization", "ReduceL2", "ReduceMean", "Pow", "Sqrt", "Erf")
OUTPUT_SCOPE = "/graph_output/"
# Module scopes (the TorchScript exporter prefixes node names with them) kept in FP32 as a whole:
# the L2 normalisations, the in-graph preprocessing, and the RAda head (its joint softmax and mask,
# and only about 1 % of the compute at K = 100).
FP32_SCOPES = ("image_norm/", "text_norm/", "/preprocess/", "/head/", OUTPUT_SCOPE)


FP16_NOTES = ("FP16 with LayerNorm, L2 normalisation, preprocessing and the RAda head in FP32 (casts in the graph); "
              "attention Softmax in FP16 so that TensorRT can fuse attention")


def fp32_node_names(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that must stay FP32: by scope, and every Softmax outside attention.

    Op types kept everywhere (FP32_OP_TYPES) are handled separately.
    """
    attention = set(attention_softmax_nodes(model))
    return [n.name for n in model.graph.node
            if any(scope in n.name for scope in FP32_SCOPES) or (n.op_type == "Softmax" and n.name not in attention)]


def attention_softmax_nodes(model: onnx.ModelProto) -> list[str]:
    """Softmax nodes in TensorRT's attention form: fed by a MatMul (through an optional mask Add/Where)
    and feeding a MatMul. The RAda head's joint softmax (Reshape between) does not match."""
    producers = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found = []
    for node in model.graph.node:
        if node.op_type != "Softmax":
            continue
        upstream = producers.get(node.input[0])
        if upstream is not None and upstream.op_type in ("Add", "Where"):  # an attention mask
            upstream = next((producers[i] for i in upstream.input if i in producers and producers[i].op_type == "MatMul"),
                            upstream)
        readers = consumers.get(node.output[0], [])
        if upstream is not None and upstream.op_type == "MatMul" and readers and all(r.op_type == "MatMul" for r in readers):
            found.append(node.name)
    return found


def to_fp16(model: onnx.ModelProto, inline_limit: int = TWO_GB) -> onnx.ModelProto:
    """An FP16 copy with FP32 inputs and outputs and the fragile ops in FP32.

    Shape inference runs on a temporary file when the graph exceeds ``inline_limit`` bytes (the
    protobuf limit), so graphs above 2 GB convert too.
    """
    model = isolate_graph_outputs(drop_identity_casts(
        inline_initializer_aliases(constants_to_initializers(model)), inline_limit))
    model = infer_types(model, inline_limit)
    # Without its own shape inference the converter edits ``model`` in place (outputs included):
    # keep what the outputs were.
    reference = onnx.ModelProto()
    reference.graph.output.extend(copy.deepcopy(list(model.graph.output)))
    with _converter_cast_cleanup_disabled(), warnings.catch_warnings():
        # The converter warns once per weight it clamps to FP16's range: thousands of lines.
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(
            model,
            keep_io_types=True,
            op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + list(FP32_OP_TYPES),
            node_block_list=fp32_node_names(model),
            disable_shape_infer=True,  # done above, on a file when the graph is large
        )
    converted = keep_float_outputs(sync_cast_targets(fold_cast_round_trips(converted)), reference)
    return matmul_before_batch_transpose(converted)


def infer_types(model: onnx.ModelProto, inline_limit: int = TWO_GB) -> onnx.ModelProto:
    """A copy of ``model`` whose value_info holds onnx's inferred types and shapes.

    Up to ``inline_limit`` bytes this is onnx.shape_inference.infer_shapes in memory; above it the
    graph is written with its weights as external data and inferred with infer_shapes_path, which
    never serialises the weights into one protobuf (the 2 GB limit), and only the inferred
    value_info is read back.
    """
    if model.ByteSize() <= inline_limit:
        return onnx.shape_inference.infer_shapes(model)
    result = copy.deepcopy(model)
    with tempfile.TemporaryDirectory(prefix="rada-fp16-") as tmp:
        src, dst = Path(tmp) / "model.onnx", Path(tmp) / "inferred.onnx"
        # Saving with external data moves the weights out of ``result``; they are read back below.
        onnx.save_model(result, str(src), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="model.onnx.data", size_threshold=1024)
        onnx.shape_inference.infer_shapes_path(str(src), str(dst))
        inferred = onnx.load(str(dst), load_external_data=False)
        onnx.external_data_helper.load_external_data_for_model(result, tmp)
    del result.graph.value_info[:]
    result.graph.value_info.extend(inferred.graph.value_info)
    return result


def matmul_before_batch_transpose(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrites Transpose(x) -> MatMul(., W) into MatMul(x, W) -> Transpose when the Transpose keeps
    the last axis in place and W is a 2-D initializer (the two orders compute the same tensor).

    Why: ONNX Runtime 1.31/1.32 on the CPU segfaults while creating a session (default options,
    its NchwcTransformer stage) on a graph holding Transpose(perm=[1, 0, 2]) -> MatMul(const) whose
    MatMul the FP32 fusions have not absorbed first, which is every FP16 open_clip ViT (the
    transformer's batch/sequence swap before in_proj). Bundles are read by bare sessions
    (polygraphy, Triton's ONNX Runtime backend), so the graph must not contain the pattern.
    For TensorRT the orders are equivalent (a shuffle either side of the GEMM). Returns a new model.
    """
    model = copy.deepcopy(model)
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    nodes = list(graph.node)
    rewritten = []
    for node in nodes:
        transpose = producers.get(node.input[0]) if node.op_type == "MatMul" else None
        if transpose is None or transpose.op_type != "Transpose":
            continue
        perm = next((list(a.ints) for a in transpose.attribute if a.name == "perm"), [])
        weight = weights.get(node.input[1])
        if not perm or perm[-1] != len(perm) - 1 or weight is None or len(weight.dims) != 2:
            continue
        out = node.output[0]
        node.input[0] = transpose.input[0]
        node.output[0] = f"{out}__before_transpose"
        rewritten.append((node, onnx.helper.make_node(
            "Transpose", [node.output[0]], [out], perm=perm, name=f"{node.name}/transpose_after")))
    if not rewritten:
        return model
    after = {id(n): t for n, t in rewritten}
    ordered = []
    for node in nodes:
        ordered.append(node)
        if id(node) in after:
            ordered.append(after[id(node)])
    # A Transpose that fed only the moved MatMul is now read by nobody.
    read = {name for node in ordered for name in node.input} | {o.name for o in graph.output}
    ordered = [n for n in ordered if n.op_type != "Transpose" or any(o in read for o in n.output)]
    del graph.node[:]
    graph.node.extend(ordered)
    # The moved MatMuls' outputs changed shape; stale value_info would contradict them.
    renamed = {n.output[0].removesuffix("__before_transpose") for n, _ in rewritten}
    for value in list(graph.value_info):
        if value.name in renamed:
            graph.value_info.remove(value)
    return model


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


def _elem_types(model: onnx.ModelProto, inline_limit: int = TWO_GB) -> dict[str, int]:
    inferred = infer_types(model, inline_limit)
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


def drop_identity_casts(model: onnx.ModelProto, inline_limit: int = TWO_GB) -> onnx.ModelProto:
    """Removes Casts to the type their input already has; returns a new model.

    open_clip's LayerNorm ends in ``x.to(orig_type)``, exported as Cast(to=float) of a float. The
    converter keeps such a Cast's output FP32 while its consumer turns FP16, a type mismatch.
    """
    model = copy.deepcopy(model)
    graph = model.graph
    types = _elem_types(model, inline_limit)
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


def node_compute_types(model: onnx.ModelProto, inline_limit: int = TWO_GB) -> dict[str, str]:
    """Node name -> element type ('float32' / 'float16') of its first float input, for checks."""
    types: dict[str, int] = {}
    for value in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        types[value.name] = value.type.tensor_type.elem_type
    for init in model.graph.initializer:
        types[init.name] = init.data_type
    inferred = infer_types(model, inline_limit)
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
