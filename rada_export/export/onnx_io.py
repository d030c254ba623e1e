"""Writing, checking and reading ONNX graphs, external data included.

Every tool of ours that reads or copies a graph goes through here, so a graph whose weights live in
a ``.data`` file beside it (graphs over 2 GB, or the dynamo exporter's output) is always handled
with that file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import onnx

if TYPE_CHECKING:
    import torch

TWO_GB = 2**31 - 1
DEFAULT_OPSET = 18
MIN_OPSET = 17  # LayerNormalization is one node from opset 17


@dataclass(frozen=True)
class GraphSpec:
    """Names and dynamic axes of one graph's inputs and outputs."""

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: Mapping[str, Mapping[int, str]]


def external_data_file(path: Path) -> Path:
    return path.with_name(path.name + ".data")


# Tensors up to this size stay inline when a graph's weights go to a .data file: shape inference
# reads small constants (Reshape shapes, scales), and it cannot read external ones.
INLINE_TENSOR_BYTES = 1024
# A generous bound on what a graph's non-weight parts (nodes, names, attributes) add to its size.
_STRUCTURE_SLACK = 1 << 20


def _is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def _external_info(tensor: onnx.TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def tensor_nbytes(tensor: onnx.TensorProto) -> int:
    """Bytes of the tensor's values, inline or external, computed from its fields (nothing is serialised)."""
    if _is_external(tensor):
        info = _external_info(tensor)
        if "length" in info:
            return int(info["length"])
    else:
        if tensor.HasField("raw_data"):
            return len(tensor.raw_data)
        typed = (tensor.float_data, tensor.int32_data, tensor.int64_data, tensor.double_data,
                 tensor.uint64_data, tensor.string_data)
        count = sum(len(field) for field in typed)
        if count:
            return count * 8 if (tensor.int64_data or tensor.double_data or tensor.uint64_data) else count * 4
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize if tensor.data_type else 0
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


def _attribute_tensors(model: onnx.ModelProto):
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t


def graph_bytes(model: onnx.ModelProto) -> int:
    """What ``model`` would take serialised with every tensor inline, without serialising it.

    ``ModelProto.ByteSize()`` fails on a graph over protobuf's 2 GB limit (the very graphs this
    decision is for), so the size is summed from the tensors' own fields, plus the nodes' size
    (each node is small enough to size on its own) and a margin for names and metadata.
    """
    weights = sum(tensor_nbytes(t) for t in model.graph.initializer)
    nodes = sum(node.ByteSize() for node in model.graph.node)
    return weights + nodes + _STRUCTURE_SLACK


def read_tensor(tensor: onnx.TensorProto, base_dir: str | os.PathLike | None = None) -> np.ndarray:
    """The tensor's values; external data is read from ``base_dir`` (the graph's folder)."""
    if not _is_external(tensor):
        return onnx.numpy_helper.to_array(tensor)
    if base_dir is None:
        raise ValueError(f"tensor {tensor.name} keeps its values in an external file: give the graph's folder")
    return onnx.numpy_helper.to_array(tensor, str(base_dir))


def _external_bytes(tensor: onnx.TensorProto, base_dir: Path) -> bytes:
    info = _external_info(tensor)
    location = Path(info["location"])
    if location.is_absolute() or ".." in location.parts:
        raise ValueError(f"tensor {tensor.name}: external data location {info['location']!r} leaves the graph's folder")
    with open(base_dir / location, "rb") as fh:
        fh.seek(int(info.get("offset", 0)))
        length = int(info["length"]) if "length" in info else -1
        data = fh.read(length)
    if length >= 0 and len(data) != length:
        raise ValueError(f"tensor {tensor.name}: external data file {location} is shorter than the graph says")
    return data


def _to_raw(tensor: onnx.TensorProto) -> bytes:
    """The tensor's values as raw little-endian bytes (the external-data layout)."""
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    return onnx.numpy_helper.to_array(tensor).tobytes()


def _clear_values(tensor: onnx.TensorProto) -> None:
    for name in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
        tensor.ClearField(name)


def inline_small_tensors(model: onnx.ModelProto, base_dir: str | os.PathLike, limit: int = 1 << 20) -> onnx.ModelProto:
    """Reads the external tensors of at most ``limit`` bytes into the graph (scales, zero points,
    shape constants), leaving the weights external; changes ``model`` in place and returns it."""
    for tensor in model.graph.initializer:
        if _is_external(tensor) and tensor_nbytes(tensor) <= limit:
            data = _external_bytes(tensor, Path(base_dir))
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
            tensor.raw_data = data
    return model


def save_graph(model: onnx.ModelProto, path: str | os.PathLike, external_threshold: int = TWO_GB,
               base_dir: str | os.PathLike | None = None) -> Path | None:
    """Saves ``model``; weights go to ``<name>.data`` beside it when the graph exceeds the threshold.

    The size is summed from the tensors (:func:`graph_bytes`), never by serialising the graph.
    Tensors that ``model`` keeps external (``base_dir``: the folder their files are in) are
    copied one at a time into the new data file, and inline tensors written out are emptied from
    ``model`` as they go, so at most one tensor is held twice. Returns the external data path, or
    None when everything is inline.
    """
    path = Path(path)
    data_path = external_data_file(path)
    if external_threshold == 0 or graph_bytes(model) > external_threshold:
        scratch = data_path.with_name(data_path.name + ".tmp")
        try:
            with open(scratch, "wb") as out:
                for tensor in model.graph.initializer:
                    external = _is_external(tensor)
                    if not external and tensor_nbytes(tensor) < INLINE_TENSOR_BYTES:
                        continue
                    if external and base_dir is None:
                        raise ValueError(f"tensor {tensor.name} keeps its values in an external file: pass base_dir")
                    data = _external_bytes(tensor, Path(base_dir)) if external else _to_raw(tensor)
                    offset = out.tell()
                    out.write(data)
                    _clear_values(tensor)
                    del tensor.external_data[:]
                    tensor.data_location = onnx.TensorProto.EXTERNAL
                    for key, value in (("location", data_path.name), ("offset", str(offset)), ("length", str(len(data)))):
                        entry = tensor.external_data.add()
                        entry.key, entry.value = key, value
                    del data
            os.replace(scratch, data_path)  # only now: the old file may have been the source
        except BaseException:
            scratch.unlink(missing_ok=True)
            raise
        write_model(model, path)
        return data_path
    if base_dir is not None:
        inline_small_tensors(model, base_dir, limit=external_threshold)
    elif any(_is_external(t) for t in model.graph.initializer):
        raise ValueError("the graph keeps tensors in external files: pass base_dir, the folder they are in")
    if data_path.exists():
        data_path.unlink()
    write_model(model, path)
    return None


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def copy_fields(source, target, skip: str) -> None:
    """Copies every set field of protobuf message ``source`` into ``target`` except ``skip``."""
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        if field.is_repeated:
            getattr(target, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def write_model(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Writes ``model`` as one protobuf file, serialising its initializers one at a time.

    ``onnx.save_model`` serialises the whole model into one buffer (and Python copies it into
    bytes): twice the weights on top of the model itself. Protobuf's wire format is a sequence of
    fields that parsers accept in any order, so the graph is written as its other fields followed
    by one length-delimited initializer entry per tensor, with the lengths summed beforehand.
    """
    model_head = onnx.ModelProto()
    copy_fields(model, model_head, skip="graph")
    graph_head = onnx.GraphProto()
    copy_fields(model.graph, graph_head, skip="initializer")
    head = graph_head.SerializeToString()
    tag = _varint((onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number << 3) | 2)
    sizes = [init.ByteSize() for init in model.graph.initializer]
    graph_size = len(head) + sum(len(tag) + len(_varint(n)) + n for n in sizes)
    graph_tag = _varint((onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number << 3) | 2)
    with open(path, "wb") as out:
        out.write(model_head.SerializeToString())
        out.write(graph_tag + _varint(graph_size) + head)
        for init, size in zip(model.graph.initializer, sizes):
            out.write(tag + _varint(size))
            out.write(init.SerializeToString())


def load_graph(path: str | os.PathLike, with_weights: bool = True) -> onnx.ModelProto:
    """Loads a graph with its external data (resolved beside the file).

    ``with_weights=False`` reads the structure only: tensors kept in a .data file stay references
    to it (:func:`save_graph` with ``base_dir`` copies them, :func:`read_tensor` reads one).
    """
    return onnx.load(str(path), load_external_data=with_weights)


def check_graph(path: str | os.PathLike) -> None:
    """onnx.checker's full check (which includes strict shape inference), by path so >2 GB graphs work."""
    onnx.checker.check_model(str(path), full_check=True)


def export_module(
    module: torch.nn.Module,
    example_inputs: Sequence[torch.Tensor],
    path: str | os.PathLike,
    spec: GraphSpec,
    opset: int = DEFAULT_OPSET,
    exporter: str = "torchscript",
    external_threshold: int = TWO_GB,
) -> Path | None:
    """Exports ``module`` to ``path``, then re-saves it in our external-data convention and checks it.

    The TorchScript exporter is the default: about 3x faster than dynamo on ViTs, and its node names
    keep the module scopes (``/encoder/image_norm/...``) that FP16 and INT8 recipes select nodes by.
    """
    import torch  # here, not at the top: calibration reads and writes graphs without torch

    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} < {MIN_OPSET}: LayerNormalization would be decomposed")
    path = Path(path)
    # The exporter writes graphs over 2 GB as one file per weight beside the graph: in a folder of
    # their own, gathered into our single .data file below and then removed.
    raw_dir = Path(tempfile.mkdtemp(prefix=f".{path.stem}-export-", dir=path.parent))
    raw = raw_dir / "graph.onnx"
    module = module.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings(), _mha_fastpath_disabled():
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                dynamic_shapes = _dynamic_shapes(example_inputs, spec)
                torch.onnx.export(
                    module, tuple(example_inputs), str(raw), input_names=list(spec.input_names),
                    output_names=list(spec.output_names), dynamic_shapes=dynamic_shapes, opset_version=opset,
                    dynamo=True, external_data=True, verbose=False,
                )
            elif exporter == "torchscript":
                torch.onnx.export(
                    module, tuple(example_inputs), str(raw), input_names=list(spec.input_names),
                    output_names=list(spec.output_names), dynamic_axes={k: dict(v) for k, v in spec.dynamic_axes.items()},
                    opset_version=opset, dynamo=False, do_constant_folding=True,
                )
            else:
                raise ValueError(f"unknown exporter {exporter!r}: use 'torchscript' or 'dynamo'")
        # The structure only: weights the exporter wrote as files are copied one by one, never loaded.
        data = save_graph(load_graph(raw, with_weights=False), path, external_threshold, base_dir=raw_dir)
    finally:
        shutil.rmtree(raw_dir, ignore_errors=True)
    check_graph(path)
    return data


@contextlib.contextmanager
def _mha_fastpath_disabled():
    # nn.MultiheadAttention's inference fast path is a fused kernel that no ONNX exporter knows.
    import torch

    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def _dynamic_shapes(example_inputs: Sequence[torch.Tensor], spec: GraphSpec):
    import torch

    dims: dict[str, torch.export.Dim] = {}
    shapes = []
    for name, tensor in zip(spec.input_names, example_inputs):
        axes = spec.dynamic_axes.get(name, {})
        entry = {}
        for axis, dim_name in axes.items():
            if dim_name not in dims:
                dims[dim_name] = torch.export.Dim(dim_name, min=1, max=65536)
            entry[axis] = dims[dim_name]
        shapes.append(entry or None)
    return tuple(shapes)


def op_types(model: onnx.ModelProto) -> set[str]:
    return {node.op_type for node in model.graph.node}


def graph_io(model: onnx.ModelProto) -> tuple[dict[str, list], dict[str, list], dict[str, str]]:
    """(input shapes, output shapes, input dtypes), with symbolic dims as their names."""

    def shape(value) -> list:
        return [d.dim_param if d.dim_param else d.dim_value for d in value.type.tensor_type.shape.dim]

    def dtype(value) -> str:
        return onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name

    inputs = {v.name: shape(v) for v in model.graph.input}
    outputs = {v.name: shape(v) for v in model.graph.output}
    return inputs, outputs, {v.name: dtype(v) for v in model.graph.input}
