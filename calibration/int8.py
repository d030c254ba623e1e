"""INT8 by explicit quantization: a Q/DQ copy of one graph, through onnxruntime.quantization.

Explicit Q/DQ is the path that lasts: TensorRT 10 deprecated its implicit calibrators and TensorRT
11 removed them with the INT8 builder flag, while a Q/DQ graph builds as written on both, and runs
in ONNX Runtime on the CPU too (which is how it is tested without a GPU).

The recipe (see ``recipe.py``): symmetric int8 everywhere (zero point 0), per-channel weights with
Q/DQ pairs on the float weights (the explicit form TensorRT reads), inputs of the chosen Linear
layers quantized, their outputs and biases left float (TensorRT takes no int32 bias).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader

from rada_export.errors import RadaError
from rada_export.export.onnx_io import TWO_GB, check_graph, graph_bytes, inline_small_tensors, load_graph, save_graph
from rada_export.progress import quiet_root_logger

from .dataset import to_pixels
from .recipe import QdqAudit, TRANSFORMER_SCOPE, audit_qdq, confine_qdq, select_linear_nodes
from .selection import select_nodes

METHODS = ("minmax", "entropy", "percentile")
DEFAULT_PERCENTILE = 99.999
# The quantizer's calibrator keeps the input of every layer it quantizes for all images of a run
# (about 180 MB per image for ViT-L-14, 300 MB for ViT-H-14, and copies of them while it merges):
# graphs with more weights than this calibrate one image per run. Ranges merge across runs, so
# the result is the same.
ONE_IMAGE_RUNS_ABOVE = 512 * 2**20


@dataclass(frozen=True)
class QuantRecipe:
    method: str = "minmax"
    percentile: float = DEFAULT_PERCENTILE  # only for method="percentile"
    batch_size: int = 8
    scope: str = TRANSFORMER_SCOPE

    def describe(self) -> str:
        extra = f" {self.percentile}" if self.method == "percentile" else ""
        return (f"onnxruntime quantize_static QDQ, {self.method}{extra} calibration; int8 symmetric (zero point 0), "
                f"per-channel weights; " + ("the image tower's block layers chosen by calibration/selection.py, biases float"
                                             if self.scope == TRANSFORMER_SCOPE else f"weight-bearing MatMul/Gemm of {self.scope.strip('/')} only, biases float"))


@dataclass
class QuantizedGraph:
    path: Path
    external_data: Path | None
    layers: list[str]  # the nodes quantized
    audit: QdqAudit
    input_name: str
    wants_frames: bool  # the graph takes uint8 frames (preprocessing embedded)


class FrameBatches(CalibrationDataReader):
    """Calibration batches from cached uint8 frames, one batch per call.

    Feeds the frames as they are to a graph that takes uint8 frames, and normalised float pixels to
    one that takes pixels. ``set_range`` and ``__len__`` (in batches) let the quantizer hand the
    batches to its calibrator in chunks, which keeps only one chunk of intermediate tensors in memory.
    """

    def __init__(self, frames: np.ndarray, input_name: str, wants_frames: bool, preprocess_cfg: Any,
                 batch_size: int = 8, on_batch: Callable[[int], None] | None = None):
        if len(frames) == 0:
            raise RadaError("no calibration images", "pass a folder with readable images")
        self.frames = frames
        self.input_name = input_name
        self.wants_frames = wants_frames
        self.preprocess_cfg = preprocess_cfg
        self.batch_size = max(1, batch_size)
        self.on_batch = on_batch or (lambda n: None)
        self.set_range(0, len(self))

    def __len__(self) -> int:
        return -(-len(self.frames) // self.batch_size)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._end = start_index, min(end_index, len(self))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= self._end:
            return None
        chunk = self.frames[self._next * self.batch_size:(self._next + 1) * self.batch_size]
        self._next += 1
        self.on_batch(1)
        batch = np.ascontiguousarray(chunk) if self.wants_frames else to_pixels(chunk, self.preprocess_cfg)
        return {self.input_name: batch}


def graph_input(model: onnx.ModelProto) -> tuple[str, bool]:
    """(name of the image input, whether it takes uint8 frames)."""
    inits = {init.name for init in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in inits]
    if len(inputs) != 1:
        names = ", ".join(v.name for v in inputs)
        raise RadaError(f"the graph takes {len(inputs)} inputs ({names}); INT8 calibration needs one image input",
                        "calibrate the fused graph (graph='model') or the image encoder (graph='image_encoder')", field="graph")
    value = inputs[0]
    return value.name, value.type.tensor_type.elem_type == onnx.TensorProto.UINT8


def ort_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    table = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}
    if method not in table:
        raise RadaError(f"unknown calibration method {method!r}", f"use one of: {', '.join(METHODS)}")
    return table[method]


def quantizer_options(recipe: QuantRecipe) -> dict[str, Any]:
    return {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "CalibTensorRangeSymmetric": True,
        "QuantizeBias": False,  # TensorRT takes no int32 bias
        "AddQDQPairToWeight": True,  # float weight -> Q -> DQ: the explicit pairs TensorRT's parser reads
        # An output Q/DQ would round the residual stream the next LayerNorm reads.
        "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"],
        # One batch per chunk: the calibrators otherwise keep the intermediate tensors of every
        # batch until the end (inputs and outputs of every MatMul: tens of MB per ViT-B image).
        "CalibStridedMinMax": 1,
        "CalibPercentile": recipe.percentile,
    }


@contextlib.contextmanager
def _quiet_quantizer():
    # onnxruntime.quantization warns through the root logger (pre-processing advice, per-node notes)
    # and its histogram calibrators print to stdout, which would corrupt `--json` output.
    with quiet_root_logger(), contextlib.redirect_stdout(io.StringIO()):
        yield


def quantize_graph(
    src: Path,
    dst: Path,
    frames: np.ndarray,
    preprocess_cfg: Any,
    recipe: QuantRecipe = QuantRecipe(),
    progress: Callable[[int], None] | None = None,
    external_threshold: int = TWO_GB,
) -> QuantizedGraph:
    """Calibrates ``src`` on ``frames`` and writes its Q/DQ copy to ``dst`` (plus ``dst.data`` when large).

    ``src`` is read with its external data; the work happens in a temporary folder beside ``dst``,
    so only ``dst`` (and its data file) are left behind. Failures are RadaErrors. ``progress``
    is called once per calibration batch and once after each of the two other steps (preparing the
    graph, writing the Q/DQ graph): ``progress_steps(len(frames), recipe)`` calls in all.
    """
    progress = progress or (lambda n: None)
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    ort_method(recipe.method)
    # The structure only: selection reads names, op types and shapes, never the weights.
    model = _load(src)
    input_name, wants_frames = graph_input(model)
    selection = select_nodes(model) if recipe.scope == TRANSFORMER_SCOPE else None
    layers = selection.nodes if selection else select_linear_nodes(model, recipe.scope)
    op_types = list(selection.op_types) if selection else ["MatMul", "Gemm"]
    if not layers:
        raise RadaError(
            f"{src.name} has no weight-bearing MatMul/Gemm/Conv nodes inside the image tower's blocks: the INT8 "
            "selection finds them by the module paths the exporter writes into the graph",
            "re-export the bundle with this rada-export (`rada-export onnx`), which writes those paths, then calibrate again",
        )
    size = graph_bytes(model)
    big = size > external_threshold
    run_batch = 1 if size > ONE_IMAGE_RUNS_ABOVE else recipe.batch_size
    del model
    work = Path(tempfile.mkdtemp(prefix=".int8-", dir=dst.parent))
    try:
        # The quantizer writes its shape-inferred copy beside its input: copy the graph (and its
        # .data file) into the scratch folder rather than let it write into the bundle.
        staged = _stage(src, work)
        raw = work / "quantized.onnx"
        reader = FrameBatches(frames, input_name, wants_frames, preprocess_cfg, run_batch,
                              _per_recipe_batch(progress, len(frames), run_batch, recipe.batch_size))
        progress(1)
        try:
            with _quiet_quantizer():
                # quantize_static runs onnx's shape inference on the file itself (the element types it
                # needs); ONNX Runtime's optimizer is not run, as it renames and fuses the nodes the
                # recipe selects by name. Graphs over 2 GB go through its external-data format.
                quantize_static(
                    str(staged), str(raw), reader, quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=op_types, nodes_to_quantize=layers, per_channel=True,
                    reduce_range=False, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    use_external_data_format=big, calibrate_method=ort_method(recipe.method),
                    calibration_providers=["CPUExecutionProvider"], extra_options=quantizer_options(recipe),
                )
        except (RadaError, KeyboardInterrupt):
            raise
        except Exception as err:  # onnxruntime and onnx raise many types; the user needs the message
            raise RadaError(
                f"onnxruntime could not quantize {src.name}: {type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}",
                "check that the graph loads (`rada-export verify --bundle ...`); re-export it if not",
            ) from err
        # Structure, scales and zero points in memory; the weights stay in the quantizer's .data file
        # until save_graph copies them one by one.
        quantized = confine_qdq(inline_small_tensors(load_graph(raw, with_weights=False), work), set(layers))
        audit = audit_qdq(quantized, set(layers))
        missing = sorted(set(layers) - set(audit.quantized_nodes))
        if audit.violations or missing:
            problems = audit.violations + [f"{name} was not quantized" for name in missing]
            raise RadaError(
                f"the INT8 graph of {src.name} breaks the recipe: " + "; ".join(problems[:5])
                + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""),
                "this is a bug in rada-export's INT8 recipe: please report it with the bundle's manifest.json",
            )
        data = save_graph(quantized, dst, external_threshold, base_dir=work)
        del quantized
        check_graph(dst)
        progress(1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return QuantizedGraph(path=dst, external_data=data, layers=layers, audit=audit, input_name=input_name,
                          wants_frames=wants_frames)


def _per_recipe_batch(progress: Callable[[int], None], images: int, run_batch: int, batch_size: int) -> Callable[[int], None]:
    """A per-run callback that advances ``progress`` once per ``batch_size`` images, as
    :func:`progress_steps` counts, whatever the size of the runs."""
    total = -(-images // batch_size)
    state = {"images": 0, "reported": 0}

    def advance(runs: int) -> None:
        state["images"] = min(images, state["images"] + runs * run_batch)
        done = total if state["images"] >= images else state["images"] // batch_size
        if done > state["reported"]:
            progress(done - state["reported"])
            state["reported"] = done

    return advance


def _stage(src: Path, work: Path) -> Path:
    """``src`` and the external data files it names, copied into ``work``.

    Copied, not hard-linked: onnx refuses to read an external data file with more than one link
    (its guard against hard-link attacks), and the quantizer reads the copy through onnx.
    """
    model = load_graph(src, with_weights=False)
    locations = {entry.value for init in model.graph.initializer for entry in init.external_data if entry.key == "location"}
    del model
    for name in [src.name, *sorted(locations)]:
        source, target = src.parent / name, work / name
        if Path(name).is_absolute() or ".." in Path(name).parts or not source.is_file():
            raise RadaError(f"{src.name} names external data {name!r}, which is not a file beside it",
                            "re-export the bundle; copy <name>.onnx.data along with <name>.onnx")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return work / src.name


def progress_steps(num_frames: int, recipe: QuantRecipe) -> int:
    return -(-num_frames // recipe.batch_size) + 2


def _load(src: Path) -> onnx.ModelProto:
    """The graph's structure (weights in a .data file stay there); a damaged file is a RadaError."""
    try:
        return load_graph(src, with_weights=False)
    except Exception as err:  # protobuf's DecodeError, a missing .data file, ...
        raise RadaError(f"cannot read ONNX graph {src} ({type(err).__name__}: {str(err)[:200]})",
                        "re-export the bundle; copy <name>.onnx.data along with <name>.onnx") from err


def qdq_scales(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Scale initializer name -> values, for every Q/DQ node (what determinism is checked on)."""
    inits = {init.name: init for init in model.graph.initializer}
    return {
        node.input[1]: onnx.numpy_helper.to_array(inits[node.input[1]])
        for node in model.graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input[1] in inits
    }
