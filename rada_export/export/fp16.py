"""FP16 variants of the graphs, with the numerically fragile parts kept in FP32 by casts in the graph.

ViTs lose accuracy when LayerNorm or the final L2 normalisation run in FP16 (TensorRT issues 2709,
4373, 3656). Putting the casts in the graph makes it strongly typed: TensorRT builds it as written,
on 10.x and on 11.x (which has no FP16 builder flag), instead of relying on flags.

Softmax inside attention stays FP16. TensorRT fuses attention when it finds the chain
BMM1 (Q.K^T, Q and/or K pre-scaled) -> optional mask -> Softmax -> BMM2 (.V) on FP16/BF16/FP8 tensors
("Fused Attention", Method 2:
https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/transformers-fused-attention.html;
TensorRT 10.10 and 10.14 release notes widen the patterns it matches). Casts to FP32 around the
Softmax put two foreign layers in that chain and make its tensors FP32 under strong typing, so the
fused (flash) kernel, which keeps the softmax's running sums in FP32 anyway, cannot be used. Any
other Softmax (the RAda head's joint softmax over K*K entries) stays FP32.

GELU's Erf runs in FP16: onnx-tensorrt's operator table lists Erf for FP32, FP16 and BF16, and
ONNX Runtime's CPU provider computes an FP16 Erf it has no kernel for in FP32 by itself. Keeping
it FP32 would add two Casts to every MLP block for no documented need.

The conversion is our own and needs only onnx and numpy (calibration on a device has neither
torch nor onnxconverter-common). It works on the graph's structure: types come from shape
inference on a skeleton of the graph whose large weights are declared as typed inputs, so no
step serialises the weights, and weights kept in a .data file are read one tensor at a time
(:func:`convert_file`), which is how graphs over protobuf's 2 GB limit convert.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from .onnx_io import TWO_GB, check_graph, copy_fields, load_graph, read_tensor, save_graph, tensor_nbytes

# Op types kept in FP32 wherever they appear. Softmax is decided per node (attention_softmax_nodes).
FP32_OP_TYPES = ("LayerNormalization", "ReduceL2", "ReduceMean", "Pow", "Sqrt")
# Op types with no FP16 form to convert to: float32-only inputs (Resize's and Upsample's scales),
# or no FP16 kernel in ONNX Runtime's CPU provider, which checks every graph here.
NO_FP16_OP_TYPES = ("Resize", "Upsample", "Range", "CumSum", "TopK", "RoiAlign", "NonMaxSuppression", "Min", "Max",
                    "RandomUniformLike", "RandomNormalLike", "EyeLike")
OUTPUT_SCOPE = "/graph_output/"
# Module scopes (the TorchScript exporter prefixes node names with them) kept in FP32 as a whole:
# the L2 normalisations, the in-graph preprocessing, and the RAda head (its joint softmax and mask,
# and only about 1 % of the compute at K = 100).
FP32_SCOPES = ("image_norm/", "text_norm/", "/preprocess/", "/head/", OUTPUT_SCOPE)
# Initializers up to this size stay in the skeleton that shape inference reads (shape constants).
_SKELETON_TENSOR_BYTES = 64 * 1024
_FLOAT, _HALF = TensorProto.FLOAT, TensorProto.FLOAT16
_FP16_MAX = float(np.finfo(np.float16).max)


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


def to_fp16(model: onnx.ModelProto, inline_limit: int = TWO_GB, base_dir: str | os.PathLike | None = None) -> onnx.ModelProto:
    """An FP16 copy of ``model`` with FP32 inputs and outputs and the fragile ops in FP32.

    ``model`` is left as it was, and its weights are not copied: the new graph starts with the
    structure and the small tensors, and each weight is read from ``model`` when it is converted,
    so the two together hold the FP32 weights once and the FP16 ones once. Tensors ``model`` keeps
    in external files are read from ``base_dir`` (the graph's folder). ``inline_limit`` is kept for
    callers of the earlier signature: no step serialises the graph, whatever its size.
    """
    out = onnx.ModelProto()
    copy_fields(model, out, skip="graph")
    copy_fields(model.graph, out.graph, skip="initializer")
    sources: dict[str, onnx.TensorProto] = {}
    for init in model.graph.initializer:
        if init.data_location == TensorProto.EXTERNAL or tensor_nbytes(init) <= _SKELETON_TENSOR_BYTES:
            out.graph.initializer.append(init)
            continue
        # A placeholder (name, type, shape) until the conversion decides what it becomes.
        placeholder = out.graph.initializer.add()
        placeholder.name, placeholder.data_type = init.name, init.data_type
        placeholder.dims.extend(init.dims)
        sources[init.name] = init
    return convert_in_place(out, base_dir, sources)


def convert_file(src: str | os.PathLike, dst: str | os.PathLike, external_threshold: int = TWO_GB) -> Path | None:
    """Writes the FP16 graph of ``src`` to ``dst`` and checks it; returns its .data file, or None.

    The graph is read without its external weights; each weight is read, converted and held as
    FP16 (half its FP32 size), then written out one tensor at a time, so graphs over 2 GB convert
    with about half their FP32 weights in memory.
    """
    src, dst = Path(src), Path(dst)
    model = convert_in_place(load_graph(src, with_weights=False), src.parent)
    data = save_graph(model, dst, external_threshold, base_dir=src.parent)
    del model
    check_graph(dst)
    return data


def convert_in_place(model: onnx.ModelProto, base_dir: str | os.PathLike | None = None,
                     sources: dict[str, onnx.TensorProto] | None = None) -> onnx.ModelProto:
    """Converts ``model`` to FP16 in place (see :func:`to_fp16`) and returns it.

    ``sources`` holds the values of initializers that ``model`` names without data (placeholders).
    """
    bypass_initializer_aliases(constants_to_initializers(model))
    types = tensor_types(model)
    drop_identity_casts(model, types)
    keep = set(fp32_node_names(model))
    _cast_graph(model, keep, types, base_dir, sources or {})
    _move_matmul_before_batch_transpose(model)
    return model


def runs_in_fp32(node: onnx.NodeProto, keep: set[str]) -> bool:
    """Whether ``node`` stays FP32: by name (``keep``), by op type, or because it is not a plain
    ONNX op whose float type follows its inputs (other domains, subgraphs, explicit dtypes)."""
    return (node.name in keep or node.op_type in FP32_OP_TYPES or node.op_type in NO_FP16_OP_TYPES
            or node.domain not in ("", "ai.onnx")
            or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
            or (node.op_type != "Cast" and any(a.name == "dtype" for a in node.attribute)))


def _half_tensor(values: np.ndarray, name: str) -> onnx.TensorProto:
    # Out-of-range weights saturate at FP16's largest finite value instead of becoming infinities.
    return onnx.numpy_helper.from_array(np.clip(values, -_FP16_MAX, _FP16_MAX).astype(np.float16), name)


def _cast_graph(model: onnx.ModelProto, keep: set[str], types: dict[str, int], base_dir,
                sources: dict[str, onnx.TensorProto]) -> None:
    """Gives every float tensor its node's precision and puts a Cast wherever two precisions meet."""
    graph = model.graph
    # By position: protobuf's Python wrappers of the nodes are not the same objects from one loop to the next.
    half_nodes = {i for i, n in enumerate(graph.node) if not runs_in_fp32(n, keep)}
    inits = {init.name: init for init in graph.initializer}
    fixed = {v.name for v in graph.input} | {o.name for o in graph.output}  # FP32 at the boundary
    is_float = {name for name, t in types.items() if t == _FLOAT}

    # Initializers read only by FP16 nodes become FP16; one read both ways gets an FP16 twin.
    readers: dict[str, set[int]] = {}
    for index, node in enumerate(graph.node):
        for name in node.input:
            if name in inits and inits[name].data_type == _FLOAT:
                readers.setdefault(name, set()).add(_HALF if index in half_nodes else _FLOAT)
    twins: dict[str, str] = {}
    current: dict[str, int] = {}
    for name, wanted in readers.items():
        if _HALF not in wanted or name in fixed:
            continue
        half = _half_tensor(read_tensor(sources.get(name, inits[name]), base_dir), name)
        if wanted == {_HALF}:
            inits[name].CopyFrom(half)
            current[name] = _HALF
            sources.pop(name, None)
        else:
            twins[name] = half.name = f"{name}__fp16"
            graph.initializer.append(half)
    for name, source in sources.items():  # placeholders that stay FP32 take their values now
        inits[name].CopyFrom(source)
    for index, node in enumerate(graph.node):
        if index in half_nodes:
            current.update({out: _HALF for out in node.output if out in is_float})

    # Graph outputs stay FP32: an FP16 producer writes an internal tensor, cast back at the end.
    tail = []
    for out in graph.output:
        if current.get(out.name) != _HALF:
            continue
        internal = f"{out.name}__fp16"
        for node in graph.node:
            node.output[:] = [internal if o == out.name else o for o in node.output]
            node.input[:] = [internal if i == out.name else i for i in node.input]
        current[internal] = _HALF
        tail.append(onnx.helper.make_node("Cast", [internal], [out.name], to=_FLOAT, name=f"{OUTPUT_SCOPE}{out.name}_to_fp32"))
        is_float.add(internal)

    casts: dict[tuple[str, int], str] = {}
    ordered: list[onnx.NodeProto] = []
    for index, node in enumerate(graph.node):
        want = _HALF if index in half_nodes else _FLOAT
        for i, name in enumerate(node.input):
            if name not in is_float or current.get(name, _FLOAT) == want:
                continue
            if want == _HALF and name in twins:
                node.input[i] = twins[name]
                continue
            if (name, want) not in casts:
                suffix = "fp16" if want == _HALF else "fp32"
                casts[name, want] = f"{name}__{suffix}" if f"{name}__{suffix}" not in current else f"{name}__cast_{suffix}"
                ordered.append(onnx.helper.make_node("Cast", [name], [casts[name, want]], to=want,
                                                     name=f"{node.name}/cast_{i}_to_{suffix}"))
            node.input[i] = casts[name, want]
        if index in half_nodes:
            _retype_node(node)
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered + tail)
    # The declared intermediate types were the FP32 graph's.
    del graph.value_info[:]


def _retype_node(node: onnx.NodeProto) -> None:
    """An FP16 node whose own attributes name a float type: Cast's target, ConstantOfShape's value."""
    for attr in node.attribute:
        if node.op_type == "Cast" and attr.name == "to" and attr.i == _FLOAT:
            attr.i = _HALF
        elif node.op_type == "ConstantOfShape" and attr.name == "value" and attr.t.data_type == _FLOAT:
            attr.t.CopyFrom(_half_tensor(onnx.numpy_helper.to_array(attr.t), attr.t.name))


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph without its large initializers, each declared as a typed input instead: what shape
    inference needs, a few megabytes whatever the weights weigh."""
    out = onnx.ModelProto()
    out.ir_version = model.ir_version
    out.opset_import.extend(model.opset_import)
    out.functions.extend(model.functions)
    graph = out.graph
    graph.name = model.graph.name
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    declared = {v.name for v in model.graph.input}
    for init in model.graph.initializer:
        if init.data_location != TensorProto.EXTERNAL and tensor_nbytes(init) <= _SKELETON_TENSOR_BYTES:
            graph.initializer.append(init)
        elif init.name not in declared:
            graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return out


def infer_types(model: onnx.ModelProto, inline_limit: int = TWO_GB) -> onnx.ModelProto:
    """The graph's skeleton with onnx's inferred types and shapes in its value_info.

    Shape inference runs on :func:`skeleton`, never on the weights, so graphs of any size infer in
    memory (``inline_limit`` is kept for callers of the earlier signature).
    """
    return onnx.shape_inference.infer_shapes(skeleton(model))


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor the graph names: inputs, outputs, initializers, inferred values."""
    inferred = infer_types(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    types.update({init.name: init.data_type for init in model.graph.initializer})
    return {name: t for name, t in types.items() if t}


def _cast_target(node: onnx.NodeProto) -> int | None:
    for attr in node.attribute:
        if attr.name == "to":
            return attr.i
    return None


def drop_identity_casts(model: onnx.ModelProto, types: dict[str, int] | None = None) -> onnx.ModelProto:
    """Removes Casts to the type their input already has, in place; returns ``model``.

    open_clip's LayerNorm ends in ``x.to(orig_type)``, exported as Cast(to=float) of a float: once
    the graph is FP16 it would be a pointless Cast between two FP16 nodes.
    """
    types = tensor_types(model) if types is None else types
    graph = model.graph
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    kept = []
    for node in graph.node:
        if node.op_type == "Cast" and node.output[0] not in outputs and types.get(node.input[0]) == _cast_target(node):
            rename[node.output[0]] = node.input[0]
        else:
            kept.append(node)
    if not rename:
        return model
    for node in kept:
        for i, name in enumerate(node.input):
            while name in rename:  # chains: a removed Cast may read another removed Cast
                name = rename[name]
            node.input[i] = name
    del graph.node[:]
    graph.node.extend(kept)
    return model


def bypass_initializer_aliases(model: onnx.ModelProto) -> onnx.ModelProto:
    """Makes the readers of an Identity of an initializer read the initializer itself, in place.

    The exporter shares equal weights (the LayerNorm scales of ones, say) through Identity nodes;
    an Identity would run FP16 and so need a Cast back for every FP32 LayerNorm reading it.
    """
    graph = model.graph
    inits = {init.name for init in graph.initializer}
    outputs = {o.name for o in graph.output}
    rename = {n.output[0]: n.input[0] for n in graph.node
              if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs}
    if not rename:
        return model
    kept = [n for n in graph.node if not (n.op_type == "Identity" and n.output and n.output[0] in rename)]
    for node in kept:
        node.input[:] = [rename.get(name, name) for name in node.input]
    del graph.node[:]
    graph.node.extend(kept)
    return model


def constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Turns tensor-valued Constant nodes into initializers, in place; returns ``model``.

    An initializer is converted once for all its readers (or given an FP16 twin), where a Constant
    node would need its own precision rules.
    """
    graph = model.graph
    kept = []
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    return model


def node_compute_types(model: onnx.ModelProto, inline_limit: int = TWO_GB) -> dict[str, str]:
    """Node name -> element type ('float32' / 'float16') of its first float input, for checks."""
    types = tensor_types(model)
    floats = {_FLOAT: "float32", _HALF: "float16"}
    result = {}
    for node in model.graph.node:
        for name in node.input:
            if types.get(name) in floats:
                result[node.name] = floats[types[name]]
                break
    return result


def matmul_before_batch_transpose(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with :func:`_move_matmul_before_batch_transpose` applied."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return _move_matmul_before_batch_transpose(copy)


def _move_matmul_before_batch_transpose(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrites Transpose(x) -> MatMul(., W) into MatMul(x, W) -> Transpose when the Transpose keeps
    the last axis in place and W is a 2-D initializer (the two orders compute the same tensor).

    Why: ONNX Runtime 1.31/1.32 on the CPU segfaults while creating a session (default options,
    its NchwcTransformer stage) on a graph holding Transpose(perm=[1, 0, 2]) -> MatMul(const) whose
    MatMul the FP32 fusions have not absorbed first, which is every FP16 open_clip ViT (the
    transformer's batch/sequence swap before in_proj). Bundles are read by bare sessions
    (polygraphy, Triton's ONNX Runtime backend), so the graph must not contain the pattern.
    For TensorRT the orders are equivalent (a shuffle either side of the GEMM). Changes ``model``
    in place and returns it.
    """
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
