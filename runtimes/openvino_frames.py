"""A frames graph split where its camera-frame preprocessing ends, so OpenVINO computes that part in f32.

Bundles exported with ``--embed-preprocess`` take uint8 camera frames of any size: a preprocessing
subgraph (rada_export/export/frames.py) box-reduces and filters them into the tensor named
``pixels``, which the image encoder (and, in the fused graph, the head) reads. Its filter weights
are computed in the graph from pixel positions (``x + 0.5 - centre``, with x in the hundreds or
thousands), which bf16's 8-bit mantissa cannot hold. OpenVINO 2026.4.1 computing that subgraph in
bf16 moved the pixels from the exact resize (``export.frames.reference_pixels``) by up to 3.8
(normalised units) on frames from 540x960 to 4K, and by 0.35 even on 224x224 ones; a
random-weight ViT-B-32's features to ONNX Runtime FP32 were at cosine 0.99982 at 224x224, 0.99947 at
1080p and 0.99884 at 4K. In f32 the pixels are within 6e-5 of the exact resize up to 4K, and the
features at 0.99996 at every size (the encoder's own bf16 noise). Marking the subgraph's nodes to
keep their precision (rt_info) changed nothing on the CPU plugin.

So where a frames graph is compiled for bf16, it is compiled as two models: frames -> ``pixels`` in
f32, and ``pixels`` -> the outputs in the precision asked for. The split is a graph transform on
OpenVINO's model of the graph, so the ONNX files stay as exported. It costs about 1 ms a call on
that ViT-B-32 at 224x224, nothing measurable on host-reduced 1080p frames.
"""

from __future__ import annotations

from typing import Any

from .manifest import GraphEntry

PIXELS = "pixels"  # the preprocessing's output tensor in every frames graph (export/frames.py)


def takes_frames(entry: GraphEntry) -> bool:
    """The graph reads raw uint8 camera frames (a bundle exported with ``--embed-preprocess``)."""
    return any(entry.input_dtypes.get(name) == "uint8" for name in entry.inputs)


def split_at_pixels(model: Any) -> tuple[Any, Any] | None:
    """``model`` (an ``openvino.Model`` read from a frames graph) as two models: the preprocessing
    (the graph's inputs -> ``pixels``) and the rest (a new f32 input named ``pixels`` -> the graph's
    outputs). None where the graph has no tensor named ``pixels`` (every exported frames graph has
    one; a graph edited by hand may not), or where the rest also reads a graph input, so that the
    two could not run one after the other.

    ``model`` is taken apart: the caller uses the two models returned (or, on None, ``model`` as it
    was: nothing is changed before the split is known to work) and not ``model`` itself.
    """
    from openvino import Model
    from openvino import opset13 as ops

    source = _output_named(model, PIXELS)
    if source is None or source.get_node().get_type_name() == "Parameter":
        return None
    consumers = list(source.get_target_inputs())
    pixels = ops.parameter(source.get_partial_shape(), source.get_element_type(), name=PIXELS)
    pixels.output(0).set_names({PIXELS})
    for consumer in consumers:
        consumer.replace_source_output(pixels.output(0))
    try:
        rest = Model(model.get_results(), [pixels], f"{model.get_friendly_name()}_from_pixels")
    except Exception:  # openvino's own exception types: the rest reads a graph input too
        for consumer in consumers:  # undone, so that the caller can still compile the graph whole
            consumer.replace_source_output(source)
        return None
    preprocessing = Model([source], model.get_parameters(), f"{model.get_friendly_name()}_to_pixels")
    return preprocessing, rest


def _output_named(model: Any, name: str):
    """The output port of ``model``'s op that carries the tensor ``name``, or None."""
    for op in model.get_ordered_ops():
        for port in op.outputs():
            if name in port.get_names():
                return port
    return None
