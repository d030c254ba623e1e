"""Which nodes of an image graph go to INT8, chosen by the graph's structure for every open_clip family.

The rule, the same for ViTs (OpenAI/LAION CLIP, EVA02, SigLIP, CoCa), ResNets, ConvNeXts and
MobileCLIP's FastViT towers:

- quantize the weight-bearing layers inside the image tower's repeated blocks: MatMul/Gemm whose
  second input is a constant weight, and, for convolutional towers, Conv with a constant weight
  (dense and grouped, per-channel weights);
- keep out, by construction, what costs accuracy for little speed:
  * attention score and value products (both inputs are activations, so no weight: never selected),
    which keeps Softmax's input and output in float;
  * stems and patch embeddings (the first layers see raw pixel statistics; ViT's patch Conv and
    ResNet's three stem convs): everything outside a numbered block, or under a ``stem`` /
    ``patch_embed`` scope;
  * the final projection and pooling heads (open_clip's ``proj``, timm's ``head``, attention
    pooling, RN50's ``attnpool``, MobileCLIP's ``final_conv``): outside the numbered blocks as well;
  * depthwise convolutions (groups == channels: few multiply-adds to win, and 1-channel filters
    make noisy per-channel ranges);
  * normalisation, the in-graph preprocessing, L2 normalisation and the RAda head (not weight-bearing
    layers, or outside the image tower's scope).

Blocks are recognised from the module path each node carries (TorchScript names nodes
``/encoder/visual/transformer/resblocks.3/mlp/c_fc/MatMul``; the dynamo exporter records the
path in metadata, read by :func:`recipe.node_scope`): a path segment with an index (``resblocks.3``,
``layer2.1``, ``stages.0``, ``blocks.5``) marks a repeated block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import onnx

from .recipe import constant_names, is_weight_bearing_linear, node_scope

VISUAL_SCOPE = "/visual/"
# A repeated block: an indexed module in the path ("resblocks.3/", "stages.0/", or dynamo's "/3/").
_BLOCK = re.compile(r"[./]\d+/")
# Scopes kept in float even inside indexed modules (timm stems are Sequentials: "stem.0").
_KEEP_FLOAT_SCOPES = ("/stem", "patch_embed", "/head/", "attn_pool", "attnpool", "final_conv")


@dataclass(frozen=True)
class Selection:
    """The nodes to quantize in one graph, and what was kept in float (counted by reason)."""

    nodes: list[str]
    op_types: tuple[str, ...]  # what onnxruntime's quantizer is asked to quantize
    tower: str  # "transformer", "convolutional" or "hybrid" (convolutions and attention blocks)
    kept_float: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        kept = ", ".join(f"{n} {why}" for why, n in self.kept_float.items() if n)
        return f"{self.tower} tower: {len(self.nodes)} layers ({', '.join(self.op_types)}) to INT8; kept float: {kept or 'none'}"


def _is_weight_conv(node: onnx.NodeProto, constants: set[str]) -> bool:
    return node.op_type == "Conv" and len(node.input) >= 2 and node.input[1] in constants


def _groups(node: onnx.NodeProto) -> int:
    for attr in node.attribute:
        if attr.name == "group":
            return int(attr.i)
    return 1


def _conv_channels(model: onnx.ModelProto, node: onnx.NodeProto) -> int:
    for init in model.graph.initializer:
        if init.name == node.input[1]:
            return int(init.dims[0])
    return -1


def select_nodes(model: onnx.ModelProto) -> Selection:
    """The image tower's weight-bearing layers to quantize, by structure (see the module doc)."""
    constants = constant_names(model)
    chosen: list[str] = []
    kept = {"stem/patch embedding": 0, "final projection/pooling head": 0, "depthwise conv": 0,
            "attention score/value products": 0}
    has_linear = has_conv = False
    for node in model.graph.node:
        scope = node_scope(node)
        if VISUAL_SCOPE not in scope:
            continue
        linear = is_weight_bearing_linear(node, constants)
        conv = _is_weight_conv(node, constants)
        if node.op_type in ("MatMul", "Gemm") and not linear:
            kept["attention score/value products"] += 1
            continue
        if not (linear or conv):
            continue
        if not _BLOCK.search(scope.split(VISUAL_SCOPE, 1)[1]) or any(s in scope for s in _KEEP_FLOAT_SCOPES):
            is_stem = "/stem" in scope or "patch_embed" in scope or (conv and "final_conv" not in scope)
            kept["stem/patch embedding" if is_stem else "final projection/pooling head"] += 1
            continue
        if conv and _groups(node) > 1 and _groups(node) == _conv_channels(model, node):
            kept["depthwise conv"] += 1
            continue
        chosen.append(node.name)
        has_linear |= linear
        has_conv |= conv
    tower = "hybrid" if has_linear and has_conv else "convolutional" if has_conv else "transformer"
    op_types = tuple(t for t, used in (("MatMul", has_linear), ("Gemm", has_linear), ("Conv", has_conv)) if used)
    return Selection(chosen, op_types, tower, kept)
