"""Writing, checking and reading ONNX graphs, external data included.

Every tool of ours that reads or copies a graph goes through here, so a graph whose weights live in
a ``.data`` file beside it (graphs over 2 GB, or the dynamo exporter's output) is always handled
with that file.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

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


def save_graph(model: onnx.ModelProto, path: str | os.PathLike, external_threshold: int = TWO_GB) -> Path | None:
    """Saves ``model``; weights go to ``<name>.data`` beside it when the graph exceeds the threshold.

    Returns the external data path, or None when everything is inline.
    """
    path = Path(path)
    data_path = external_data_file(path)
    if data_path.exists():
        data_path.unlink()
    if model.ByteSize() > external_threshold or external_threshold == 0:
        onnx.save_model(
            model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
            # Small tensors (shape constants) stay inline: shape inference cannot read external ones.
            location=data_path.name, size_threshold=1024,
        )
        return data_path
    onnx.save_model(model, str(path))
    return None


def load_graph(path: str | os.PathLike, with_weights: bool = True) -> onnx.ModelProto:
    """Loads a graph with its external data (resolved beside the file)."""
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
    raw = path.with_name(path.stem + ".raw.onnx")
    module = module.eval()
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
    try:
        model = load_graph(raw)
        data = save_graph(model, path, external_threshold)
    finally:
        for leftover in (raw, external_data_file(raw)):
            if leftover.exists():
                leftover.unlink()
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
