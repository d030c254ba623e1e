"""Every name a bundle uses, defined once: files, graph keys, precisions, the engines folder.

A bundle is one folder::

    manifest.json                     what the bundle is, and a sha256 of every file below
    classes.txt  text_features.npy  head.safetensors
    <graph>.onnx                      fp32 graphs (model, image_encoder, text_encoder, head)
    <graph>.<variant>.onnx            fp16, int8 (Q/DQ over FP32), int8_fp16 (Q/DQ over FP16)
    <graph file>.data                 a graph's ONNX external data, beside it (graphs over 2 GB)
    tokenizer/...                     the files the tokenizer kind names (bundle/tokenizers.py)
    engines/<gpu>-sm<cc>-trt<v>/<graph>.<precision>.engine + .json   TensorRT engines (`rada-export trt`)
"""

from __future__ import annotations

from ..engine_layout import ENGINE_SUFFIX, ENGINES_DIR, engine_file_name, meta_path

MANIFEST_NAME = "manifest.json"
TEXT_FEATURES = "text_features.npy"
HEAD_FILE = "head.safetensors"
CLASSES_FILE = "classes.txt"
TOKENIZER_DIR = "tokenizer"
GRAPH_SUFFIX = ".onnx"
EXTERNAL_DATA_SUFFIX = ".data"

# Graph names and what each computes.
IMAGE_ENCODER = "image_encoder"  # pixels (B x 3 x H x W) -> image_features (B x D)
TEXT_ENCODER = "text_encoder"  # token_ids (K x L) -> text_features (K x D)
HEAD = "head"  # image_features (B x D), text_features (K x D) -> logits (B x K)
FUSED = "model"  # pixels -> logits (B x K), image_features (B x D)
GRAPH_NAMES = (FUSED, IMAGE_ENCODER, TEXT_ENCODER, HEAD)

# What each graph returns: the runtime checks every run's outputs against these names.
GRAPH_OUTPUTS = {FUSED: ("logits", "image_features"), IMAGE_ENCODER: ("image_features",),
                 TEXT_ENCODER: ("text_features",), HEAD: ("logits",)}

PRECISIONS = ("fp32", "fp16", "int8")
# Manifest key suffix -> the precision it holds. ``int8_fp16`` is the Q/DQ graph whose other parts are
# FP16 (calibration/int8_fp16.py): what TensorRT's strongly typed INT8 engines build from; ``int8`` is
# the same Q/DQ over FP32, fastest on ONNX Runtime's CPU kernels.
VARIANT_PRECISION = {"": "fp32", "fp16": "fp16", "int8": "int8", "int8_fp16": "int8"}
INT8_VARIANTS = ("int8", "int8_fp16")

__all__ = [
    "CLASSES_FILE", "ENGINES_DIR", "ENGINE_SUFFIX", "EXTERNAL_DATA_SUFFIX", "FUSED", "GRAPH_NAMES", "GRAPH_OUTPUTS",
    "GRAPH_SUFFIX", "HEAD", "HEAD_FILE", "IMAGE_ENCODER", "INT8_VARIANTS", "MANIFEST_NAME", "PRECISIONS", "TEXT_ENCODER",
    "TEXT_FEATURES", "TOKENIZER_DIR", "VARIANT_PRECISION", "engine_file_name", "external_data_name", "graph_file",
    "graph_key", "meta_path",
]


def graph_key(graph: str, variant: str = "") -> str:
    """The manifest key of a graph variant: ``model``, ``model.fp16``, ``model.int8_fp16``."""
    return f"{graph}.{variant}" if variant and variant != "fp32" else graph


def graph_file(graph: str, variant: str = "") -> str:
    """The file name a graph variant is written to: ``model.onnx``, ``model.int8.onnx``."""
    return graph_key(graph, variant) + GRAPH_SUFFIX


def external_data_name(graph_file_name: str) -> str:
    """The external-data file beside a graph: ``model.onnx`` -> ``model.onnx.data``."""
    return graph_file_name + EXTERNAL_DATA_SUFFIX
