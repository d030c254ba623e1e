"""The INT8 selection by graph structure (calibration/selection.py), on graphs from the real exporter."""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

from rada_export.calibration.selection import select_nodes
from rada_export.export.onnx_io import GraphSpec, export_module


class _Block(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.qk = nn.Linear(c, 2 * c)
        self.fc = nn.Linear(c, c)

    def forward(self, x):
        x = torch.relu(self.conv(x)) + self.dw(x)
        tokens = x.flatten(2).transpose(1, 2)
        q, k = self.qk(tokens).chunk(2, dim=-1)
        attn = (q @ k.transpose(1, 2)).softmax(-1)  # activation x activation: never quantized
        tokens = tokens + self.fc(attn @ tokens)
        return tokens.transpose(1, 2).reshape(x.shape)


class _Tower(nn.Module):
    """Stem, two indexed blocks, a head: the shape of timm's and open_clip's towers."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, stride=2, padding=1), nn.ReLU())
        self.stages = nn.Sequential(_Block(c), _Block(c))
        self.head = nn.Linear(c, 4)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)).mean(dim=(2, 3)))


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.visual = _Tower()

    def forward(self, x):
        return self.visual(x)


@pytest.fixture(scope="module")
def tower_graph(tmp_path_factory):
    path = tmp_path_factory.mktemp("tower") / "tower.onnx"
    export_module(_Model().eval(), (torch.randn(2, 3, 16, 16),), path,
                  GraphSpec(("pixels",), ("out",), {"pixels": {0: "batch"}, "out": {0: "batch"}}))
    return onnx.load(str(path))


def test_convolutional_tower_quantizes_block_layers_only(tower_graph):
    sel = select_nodes(tower_graph)
    by_name = {n.name: n for n in tower_graph.graph.node}
    chosen = [by_name[n] for n in sel.nodes]
    assert sorted(n.op_type for n in chosen) == ["Conv", "Conv", "MatMul", "MatMul", "MatMul", "MatMul"]
    assert all("/stages/stages." in n.name for n in chosen)
    assert not any("/dw/" in n.name or "/stem/" in n.name or "/head/" in n.name for n in chosen)
    assert sel.tower == "hybrid" and set(sel.op_types) >= {"Conv", "MatMul"}
    assert sel.kept_float["stem/patch embedding"] == 1 and sel.kept_float["depthwise conv"] == 2
    assert sel.kept_float["final projection/pooling head"] == 1
    assert sel.kept_float["attention score/value products"] == 4  # q @ k^T and attn @ v, in two blocks


def test_vit_tower_keeps_patch_embedding_and_projection_float(tiny_clip, tmp_path):
    from rada_export.export.modules import ImageEncoder

    path = tmp_path / "image.onnx"
    h, w = tiny_clip.preprocess_config.size
    export_module(ImageEncoder(tiny_clip.model).eval(), (torch.randn(2, 3, h, w),), path,
                  GraphSpec(("pixels",), ("image_features",), {"pixels": {0: "batch"}, "image_features": {0: "batch"}}))
    graph = onnx.load(str(path))
    sel = select_nodes(graph)
    layers = tiny_clip.model.visual.transformer.layers
    assert len(sel.nodes) == 4 * layers  # in_proj, out_proj, c_fc, c_proj per block
    assert sel.tower == "transformer" and "Conv" not in sel.op_types
    assert sel.kept_float["stem/patch embedding"] == 1  # conv1, the patch embedding
    assert sel.kept_float["final projection/pooling head"] == 1  # visual.proj


def test_a_convolutional_tower_quantizes_and_passes_the_audit(tower_graph, tmp_path):
    """Conv -> ReLU -> Conv chains: the Q/DQ graph keeps the recipe and stays close to FP32."""
    import numpy as np

    from rada_export.calibration.dataset import to_pixels
    from rada_export.calibration.int8 import quantize_graph
    from rada_export.runtimes import manifest as mf
    from rada_export.runtimes.ort_session import create_session

    src = tmp_path / "tower.onnx"
    onnx.save(tower_graph, str(src))
    pre = mf.Preprocess(size=[16, 16], mode="RGB", mean=[0.5] * 3, std=[0.25] * 3, interpolation="bicubic", resize_mode="shortest")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(32, 16, 16, 3), dtype=np.uint8)
    result = quantize_graph(src, tmp_path / "tower.int8.onnx", frames, pre)
    assert result.audit.ok and len(result.layers) == 6
    probe = to_pixels(rng.integers(0, 256, size=(8, 16, 16, 3), dtype=np.uint8), pre)
    ref = create_session(src).run(None, {"pixels": probe})[0]
    out = create_session(tmp_path / "tower.int8.onnx").run(None, {"pixels": probe})[0]
    cos = np.sum(ref * out, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1))
    assert cos.min() > 0.98, cos
