"""Camera frames at engine speed, and Cast-first uint8 frames.

The frames graph (rada_export/export/frames.py) must equal its numpy and PyTorch references on
every resize mode, frame size and channel layout; stay close to open_clip's Pillow pipeline on
textured frames; keep uint8 out of every graph but its input, which feeds only a Cast; and the
runtime must hand it the frame as it is.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto
import pytest
import torch

from rada_export.errors import RadaError
from rada_export.export import frames as fr
from rada_export.export.bundle import ExportRequest, export_bundle, parse_frame_size
from rada_export.export.modules import Preprocess as TorchPreprocess
from rada_export.runtimes import preprocess as pp
from rada_export.runtimes.manifest import Frames, Preprocess, read_manifest

from conftest import calibrate_for_tests

ort = pytest.importorskip("onnxruntime")

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
VIT_B_32 = Preprocess([224, 224], "RGB", CLIP_MEAN, CLIP_STD, "bicubic", "shortest")

CONFIGS = {
    "shortest": VIT_B_32,
    "shortest-bilinear": Preprocess([64, 64], "RGB", CLIP_MEAN, CLIP_STD, "bilinear", "shortest"),
    "shortest-nonsquare": Preprocess([48, 64], "RGB", CLIP_MEAN, CLIP_STD, "bilinear", "shortest"),
    "squash": Preprocess([64, 48], "RGB", CLIP_MEAN, CLIP_STD, "bicubic", "squash"),
    "longest": Preprocess([64, 64], "RGB", CLIP_MEAN, CLIP_STD, "bicubic", "longest", fill_color=127),
    "longest-nonsquare": Preprocess([47, 33], "RGB", CLIP_MEAN, CLIP_STD, "bicubic", "longest", fill_color=9),
}
# (height, width): landscape and portrait camera sizes, odd and prime sides, smaller than the input
SIZES = [(480, 640), (640, 480), (301, 199), (225, 225), (50, 31), (97, 1203), (1009, 37), (224, 224)]


def textured(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A textured RGB frame: gratings near the Nyquist limit, coarse colour waves, edges and noise,
    the content on which an aliased resize goes wrong."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    fine = 60 * np.sin(xx * 0.9 + yy * 0.3)[..., None] * np.array([1.0, 0.7, 0.4])
    coarse = 40 * np.sin(xx[..., None] * 0.013 * np.array([1, 2, 3]) + yy[..., None] * 0.021 + seed)
    edges = 50 * ((xx // 37 + yy // 53) % 2)[..., None]
    return np.clip(100 + fine + coarse + edges + rng.normal(0, 15, (height, width, 3)), 0, 255).astype(np.uint8)


def _session(model: onnx.ModelProto):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def graphs():
    cache: dict = {}

    def get(name: str, order: str = "rgb"):
        if (name, order) not in cache:
            cache[(name, order)] = _session(fr.frames_graph(CONFIGS[name], fr.FramesConfig(order), 18))
        return cache[(name, order)]

    return get


# ---------------------------------------------------------------------------------------------
# The graph equals its references


@pytest.mark.parametrize("name", list(CONFIGS))
def test_graph_equals_numpy_and_torch_references(graphs, name):
    cfg = CONFIGS[name]
    session = graphs(name)
    for i, (h, w) in enumerate(SIZES):
        frames = np.stack([textured(h, w, seed) for seed in (i, i + 100)])
        got = session.run(None, {"frames": frames})[0]
        ref = fr.reference_pixels(frames, cfg)
        assert got.shape == (2, 3, *cfg.size)
        assert np.abs(got - ref).max() <= 2e-4, (name, h, w)
        with torch.no_grad():
            torch_out = TorchPreprocess(cfg)(torch.from_numpy(frames)).numpy()
        assert np.abs(torch_out - ref).max() <= 2e-4, (name, h, w)


# Output sizes whose blocks do not divide them (336 = 11 x 31 - 5, 100 = 4 x 25), and frames from
# one pixel (a window wider than the frame) to 4K (windows moved inside the used pixels at both ends).
BANDED = {
    "shortest-336": Preprocess([336, 336], "RGB", CLIP_MEAN, CLIP_STD, "bicubic", "shortest"),
    "longest-100": Preprocess([100, 100], "RGB", CLIP_MEAN, CLIP_STD, "bilinear", "longest", fill_color=3),
}


@pytest.mark.parametrize("name", list(BANDED))
def test_the_banded_filter_reaches_every_tap(name):
    """The banded filter equals the dense reference: no block's window misses a tap, at any size."""
    cfg = BANDED[name]
    session = _session(fr.frames_graph(cfg, fr.FramesConfig("rgb"), 18))
    sizes = [(1, 1), (2, 3), (7, 400), (1080, 1920), (1920, 1080)] + ([(2160, 3840)] if name == "longest-100" else [])
    for i, (h, w) in enumerate(sizes):
        frames = textured(h, w, i)[None]
        got = session.run(None, {"frames": frames})[0]
        assert np.abs(got - fr.reference_pixels(frames, cfg)).max() <= 2e-4, (name, h, w)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_graph_close_to_open_clip_pillow(graphs, name):
    """Against runtimes.preprocess, itself bit-identical to open_clip's transform (test_preprocess.py)."""
    cfg = CONFIGS[name]
    session = graphs(name)
    for i, (h, w) in enumerate(SIZES):
        frame = textured(h, w, i)
        got = session.run(None, {"frames": frame[None]})[0][0]
        exact = pp.preprocess(frame, cfg)[0]
        # measured: 0 when no resize; over these sizes and modes at most 0.095 (about 6 of 255
        # levels), mean at most 0.026 (the 10x downscales, where the box step acts most)
        assert np.abs(got - exact).max() <= 0.12, (name, h, w)
        assert np.abs(got - exact).mean() <= 0.03, (name, h, w)


def test_identity_size_is_exact(graphs):
    frame = textured(224, 224, 3)
    got = graphs("shortest").run(None, {"frames": frame[None]})[0]
    assert np.abs(got - pp.preprocess(frame, VIT_B_32)).max() <= 1e-5


def test_channel_orders_alpha_and_grey(graphs):
    rgb = textured(360, 480, 5)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    alpha = np.random.default_rng(0).integers(0, 256, (360, 480, 1), dtype=np.uint8)
    ref = graphs("shortest").run(None, {"frames": rgb[None]})[0]
    assert np.abs(graphs("shortest", "bgr").run(None, {"frames": bgr[None]})[0] - ref).max() <= 1e-5
    rgba = np.concatenate([rgb, alpha], axis=2)
    bgra = np.concatenate([bgr, alpha], axis=2)
    assert np.abs(graphs("shortest").run(None, {"frames": rgba[None]})[0] - ref).max() <= 1e-5
    assert np.abs(graphs("shortest", "bgr").run(None, {"frames": bgra[None]})[0] - ref).max() <= 1e-5
    grey = rgb[..., 1]
    got = graphs("shortest").run(None, {"frames": grey[None, :, :, None]})[0]
    want = graphs("shortest").run(None, {"frames": np.repeat(grey[:, :, None], 3, axis=2)[None]})[0]
    assert np.abs(got - want).max() <= 1e-5


def test_reduction_factor_follows_pillow_and_divides():
    # Pillow: int(in / out / reducing_gap) or 1; here also a divisor of the side, at most MAX_FACTOR
    assert fr.reduction_factor(1080, 224) == 2 and fr.reduction_factor(1920, 398) == 2
    assert fr.reduction_factor(2160, 224) == 4 and fr.reduction_factor(720, 224) == 1
    assert fr.reduction_factor(1009, 50) == 1  # prime: no box step, the filter does it all
    assert fr.reduction_factor(100000, 10) == fr.MAX_FACTOR


# ---------------------------------------------------------------------------------------------
# Closeness on textured 1080p frames, in features (ViT-B-32, random weights: no weights can be
# downloaded here), for the frames graph and the fast host path, against open_clip's own pipeline


# TensorRT computes shape tensors with Concatenation, ElementWise, Gather, Identity and Reduce layers
# ("Dynamic Shapes: Advanced Topics", docs.nvidia.com/deeplearning/tensorrt/10.16.1/inference-library/
# dynamic-shapes-advanced.html); Select (Where), Not and the unary layers are not in that list.
NOT_ON_SHAPE_TENSORS = {"Where", "Not", "Neg", "Abs"}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_shape_arithmetic_uses_only_tensorrts_shape_tensor_layers(name):
    model = onnx.shape_inference.infer_shapes(fr.frames_graph(CONFIGS[name], fr.FramesConfig("bgr"), 18))
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    integer = {TensorProto.INT64, TensorProto.INT32, TensorProto.BOOL}
    offending = [(n.op_type, n.name) for n in model.graph.node
                 if n.op_type in NOT_ON_SHAPE_TENSORS and types.get(n.output[0]) in integer]
    assert not offending, offending
    wheres = [n for n in model.graph.node if n.op_type == "Where"]
    assert all(types[n.output[0]] == TensorProto.FLOAT for n in wheres)  # the filter's taps: float execution tensors


def _scalar_graph(build, inputs: list[str], outputs: int):
    """A graph of int64 scalar inputs -> the int64 outputs of ``build(builder, *inputs)``, for ONNX Runtime."""
    b = fr._Builder()
    results = build(b, *inputs)
    names = [f"out{i}" for i in range(outputs)]
    b.nodes.extend(onnx.helper.make_node("Identity", [r], [n]) for r, n in zip(results, names))
    graph = onnx.helper.make_graph(
        b.nodes, "shape_arithmetic", [onnx.helper.make_tensor_value_info(i, TensorProto.INT64, []) for i in inputs],
        [onnx.helper.make_tensor_value_info(n, TensorProto.INT64, None) for n in names], initializer=b.initializers)
    return _session(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_geometry_and_box_factor_in_integer_arithmetic_equal_the_python_rules(name):
    """Every frame size from 1 to 96 (and camera sizes): the graph's resized size, crop/pad offset and box
    factors equal geometry() and reduction_factor(), so the Where-free arithmetic changes no pixel."""
    cfg = CONFIGS[name]

    def build(b, height, width):
        nh, nw, top, left, _ = fr._graph_geometry(b, height, width, cfg)
        return [nh, nw, top, left, fr._graph_factor(b, height, nh, "y"), fr._graph_factor(b, width, nw, "x")]

    session = _scalar_graph(build, ["height", "width"], 6)
    sizes = [(h, w) for h in range(1, 97, 5) for w in range(1, 97, 3)] + SIZES + [(1080, 1920), (2160, 3840), (1920, 1080)]
    for h, w in sizes:
        g = fr.geometry(h, w, cfg)
        if min(g.resized) == 0:  # a side that rounds to nothing (96 x 1 into 47 x 33): no image to resize, either way
            continue
        got = [int(v) for v in session.run(None, {"height": np.array(h, np.int64), "width": np.array(w, np.int64)})]
        want = [*g.resized, *g.offset, fr.reduction_factor(h, g.resized[0]), fr.reduction_factor(w, g.resized[1])]
        assert got == want, (name, h, w, got, want)


def test_round_half_even_in_integer_arithmetic_is_pythons_round():
    def build(b, p, q):
        return [fr._round_half_even(b, p, q, b.i64(1, "one"), b.i64(2, "two"))]

    session = _scalar_graph(build, ["p", "q"], 1)
    for p_ in range(0, 200):
        for q_ in range(1, 23):
            got = int(session.run(None, {"p": np.array(p_, np.int64), "q": np.array(q_, np.int64)})[0])
            assert got == round(p_ / q_), (p_, q_)


def test_default_frame_profile_fits_an_orin_nano():
    """Without --frame-size, the profile's max is 4K UHD (landscape) and the float Cast of a max batch
    of 4-channel frames stays near half a gigabyte (the 4096 x 4096 range needed 1.07 GB)."""
    from rada_export.tensorrt.plan import MAX_FRAMES_BATCH

    frames = fr.FramesConfig().manifest_entry()
    assert (frames.height, frames.width) == ([1, 1080, 2160], [1, 1920, 3840])
    cast_bytes = MAX_FRAMES_BATCH * frames.height[2] * frames.width[2] * frames.channels[2] * 4
    assert cast_bytes <= 600 * 2**20, cast_bytes
    fixed = fr.FramesConfig(frame_size=(720, 1280)).manifest_entry()
    assert (fixed.height, fixed.width) == ([720] * 3, [1280] * 3)


@pytest.mark.slow
def test_closeness_to_open_clip_on_1080p_frames(graphs):
    open_clip = pytest.importorskip("open_clip")
    from PIL import Image

    model, _, transform = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    model.eval()
    frames = [textured(1080, 1920, seed) for seed in range(4)] + [textured(2160, 3840, 7), textured(720, 1280, 8)]
    session = graphs("shortest", "bgr")
    paths = {"graph": [], "host box + graph": [], "fast host path": []}  # what CPU backends feed: the host box
    reference, pixel_diff = [], dict.fromkeys(paths, 0.0)
    for frame in frames:
        bgr = np.ascontiguousarray(frame[..., ::-1])
        reference.append(transform(Image.fromarray(frame)).numpy())
        pixels = {
            "graph": session.run(None, {"frames": bgr[None]})[0][0],
            "host box + graph": session.run(None, {"frames": pp.reduce_for_graph(bgr[None], VIT_B_32, Frames())})[0][0],
            "fast host path": pp.preprocess(bgr, VIT_B_32, bgr=True, fast=True)[0],
        }
        for name, x in pixels.items():
            paths[name].append(x)
            pixel_diff[name] = max(pixel_diff[name], float(np.abs(x - reference[-1]).max()))
    with torch.no_grad():
        encode = lambda x: torch.nn.functional.normalize(model.encode_image(torch.from_numpy(np.stack(x))), dim=-1)  # noqa: E731
        ref = encode(reference)
        feats = {name: encode(x) for name, x in paths.items()}
    cos = {name: float((ref * f).sum(-1).min()) for name, f in feats.items()}
    cos_box_vs_graph = float((feats["graph"] * feats["host box + graph"]).sum(-1).min())
    for name in paths:
        print(f"{name}: max pixel diff to open_clip {pixel_diff[name]:.4f}, min cosine {cos[name]:.6f}")
    print(f"host box + graph vs graph alone: min cosine {cos_box_vs_graph:.7f}")
    # measured (benchmarks/RESULTS.md, "Camera frames"): graph 0.069 / 0.999984, fast host path 0.075 / 0.999972;
    # host box + graph as the graph alone to within uint8 rounding (RESULTS.md, "Camera frames on CPUs")
    assert all(d <= 0.1 for d in pixel_diff.values()) and all(c >= 0.9995 for c in cos.values())
    assert cos_box_vs_graph >= 0.99995  # measured 0.999991 to 0.999993


def test_fast_host_path_is_exact_without_reduction():
    """reducing_gap only acts from a 4x downscale: smaller frames stay bit-identical to open_clip."""
    for h, w in [(301, 199), (448, 600), (224, 224)]:
        frame = textured(h, w, 1)
        assert np.array_equal(pp.preprocess(frame, VIT_B_32, fast=True), pp.preprocess(frame, VIT_B_32))
    big = textured(1080, 1920, 2)
    diff = np.abs(pp.preprocess(big, VIT_B_32, fast=True) - pp.preprocess(big, VIT_B_32))
    assert 0 < diff.max() <= 0.1


def test_host_path_bgr_and_alpha():
    rgb = textured(200, 300, 4)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    ref = pp.preprocess(rgb, VIT_B_32)
    assert np.array_equal(pp.preprocess(bgr, VIT_B_32, bgr=True), ref)
    alpha = np.full((200, 300, 1), 7, np.uint8)
    assert np.array_equal(pp.preprocess(np.concatenate([rgb, alpha], 2), VIT_B_32), ref)
    assert np.array_equal(pp.preprocess(np.concatenate([bgr, alpha], 2), VIT_B_32, bgr=True), ref)


# ---------------------------------------------------------------------------------------------
# Bundles: Cast first, no uint8 anywhere else, FP16 and INT8 variants


@pytest.fixture(scope="module")
def frames_bundle(tmp_path_factory, tiny_clip):
    """Tiny model, --embed-preprocess --fp16 --channel-order bgr, then calibrated to INT8."""
    root = tmp_path_factory.mktemp("frames-bundle")
    result = export_bundle(ExportRequest(out=root / "bundle", model="rada-tiny-ViT", pretrained="none", classes=["cat", "dog", "car"],
                                         fp16=True, embed_preprocess=True, channel_order="bgr", max_batch=8), clip=tiny_clip)
    calibrate_for_tests(result.bundle, root)
    return result.bundle


def _uint8_tensors(model: onnx.ModelProto) -> set[str]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph
    typed = list(inferred.input) + list(inferred.output) + list(inferred.value_info)
    names = {v.name for v in typed if v.type.tensor_type.elem_type == onnx.TensorProto.UINT8}
    names |= {t.name for t in inferred.initializer if t.data_type == onnx.TensorProto.UINT8}
    for node in inferred.node:
        for attr in node.attribute:
            if attr.name == "to" and attr.i == onnx.TensorProto.UINT8:
                names |= set(node.output)
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == onnx.TensorProto.UINT8:
                names |= set(node.output)
    return names


def test_every_graph_keeps_uint8_to_the_frames_input(frames_bundle):
    """TensorRT takes uint8 only as a network input that feeds a Cast."""
    from rada_export.tensorrt.ops import check_ops

    manifest = read_manifest(frames_bundle)
    assert {"model", "model.fp16", "model.int8"} <= set(manifest.graphs)
    for key, entry in manifest.graphs.items():
        model = onnx.load(str(frames_bundle / entry.file))
        uint8 = _uint8_tensors(model)
        if key.startswith("model"):
            assert uint8 == {"frames"}, (key, uint8)
            consumers = [n for n in model.graph.node if "frames" in n.input]
            assert [n.op_type for n in consumers] == ["Cast"], (key, consumers)
            assert consumers[0].attribute[0].i == onnx.TensorProto.FLOAT
            assert manifest.graphs[key].input_dtypes == {"frames": "uint8"}
            assert manifest.graphs[key].inputs["frames"] == ["batch", "frame_height", "frame_width", "frame_channels"]
        else:
            assert not uint8, (key, uint8)
        result = check_ops(frames_bundle / entry.file)
        assert result.ok, (key, result.problems)


def test_the_uint8_check_fails_on_the_old_permute_first_graph(frames_bundle):
    """The check above would have caught the old graph: a Transpose on the uint8 frames before the Cast."""
    model = onnx.load(str(frames_bundle / "model.onnx"))
    cast = next(n for n in model.graph.node if "frames" in n.input)
    cast.input[0] = "frames_nchw"
    model.graph.node.insert(0, onnx.helper.make_node("Transpose", ["frames"], ["frames_nchw"], perm=[0, 1, 2, 3]))
    assert _uint8_tensors(model) == {"frames", "frames_nchw"}


def test_fp16_and_int8_frames_graphs_verify(frames_bundle):
    manifest = read_manifest(frames_bundle)
    frames = np.stack([np.ascontiguousarray(textured(1080, 1920, s)[..., ::-1]) for s in range(3)])
    outs = {}
    for key in ("model", "model.fp16", "model.int8"):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(frames_bundle / manifest.graphs[key].file), options, providers=["CPUExecutionProvider"],
                                       disabled_optimizers=["NchwcTransformer"])
        outs[key] = session.run(["logits", "image_features"], {"frames": frames})
    ref_logits, ref_feats = outs["model"]
    # the torch reference of the whole fused model on the same 1080p frames
    from rada_export.checkpoint import load_head
    from rada_export.clip import load_clip
    from rada_export.export.modules import FusedModel

    clip = load_clip("rada-tiny-ViT", "none")
    fused = FusedModel(clip.model, load_head(frames_bundle / "head.safetensors").head,
                       torch.from_numpy(np.load(frames_bundle / "text_features.npy")), clip.preprocess_config, "bgr").eval()
    with torch.no_grad():
        torch_logits, torch_feats = (t.numpy() for t in fused(torch.from_numpy(frames)))
    assert np.abs(ref_feats - torch_feats).max() <= 1e-4
    assert np.abs(ref_logits - torch_logits).max() <= 1e-3
    cos = {k: float((v[1] * ref_feats).sum(-1).min()) for k, v in outs.items()}
    assert cos["model.fp16"] >= 0.999, cos
    assert cos["model.int8"] >= 0.98, cos


# ---------------------------------------------------------------------------------------------
# The runtime: the frame as it is


def test_runtime_hands_the_frame_as_it_is(frames_bundle, monkeypatch):
    from rada_export.runtimes.runtime import load_bundle

    rt = load_bundle(frames_bundle, backend="onnxruntime", device="cpu", host_frame_reduction=False)
    assert "camera frames resized in the graph" in rt.description
    bgr = np.ascontiguousarray(textured(1080, 1920, 9)[..., ::-1])
    fed = []
    runner = rt.fused_runner()
    real_run = runner.run
    monkeypatch.setattr(runner, "run", lambda feeds: fed.append(feeds["frames"]) or real_run(feeds))
    pred = rt.predict(bgr, bgr=True)
    assert fed[-1].dtype == np.uint8 and fed[-1].shape == (1, 1080, 1920, 3) and np.shares_memory(fed[-1], bgr)
    # an RGB frame to a BGR graph: one copy, same result
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    assert np.abs(rt.predict(rgb, bgr=False).logits - pred.logits).max() <= 1e-5 and not np.shares_memory(fed[-1], rgb)
    # BGRA: alpha dropped in the graph, still no copy
    bgra = np.concatenate([bgr, np.full((1080, 1920, 1), 255, np.uint8)], axis=2)
    assert np.abs(rt.predict(bgra, bgr=True).logits - pred.logits).max() <= 1e-5 and np.shares_memory(fed[-1], bgra)
    # a batch, split at batch_size without copies
    batch = np.stack([bgr, bgr, bgr])
    out = rt.predict(batch, bgr=True, batch_size=2)
    assert out.logits.shape == (3, 3) and np.abs(out.logits - pred.logits).max() <= 1e-4
    assert [f.shape[0] for f in fed[-2:]] == [2, 1] and all(np.shares_memory(f, batch) for f in fed[-2:])
    # paths, PIL images and lists still go through the exact host geometry, then the same graph
    listed = rt.predict([bgr], bgr=True)
    assert np.abs(listed.image_features - pred.image_features).max() <= 5e-3


def test_cpu_backends_box_reduce_on_the_host(frames_bundle, monkeypatch):
    """On a CPU backend the runtime feeds the graph the frame box-reduced by the graph's own factor."""
    from rada_export.runtimes.runtime import load_bundle

    rt = load_bundle(frames_bundle, backend="onnxruntime", device="cpu")
    assert rt.host_frame_reduction and "box reduction on the host" in rt.description
    graph_only = load_bundle(frames_bundle, backend="onnxruntime", device="cpu", host_frame_reduction=False)
    fed = []
    runner = rt.fused_runner()
    real_run = runner.run
    monkeypatch.setattr(runner, "run", lambda feeds: fed.append(feeds["frames"]) or real_run(feeds))
    cfg = rt.manifest.preprocess
    assert cfg.size == [64, 64]  # the tiny model: 1080p is reduced 8x, 4K 16x
    for size, reduced in [((1080, 1920), (135, 240)), ((2160, 3840), (135, 240)), ((150, 200), (150, 200))]:
        bgr = np.ascontiguousarray(textured(*size, seed=size[0])[..., ::-1])
        got, want = rt.predict(bgr, bgr=True), graph_only.predict(bgr, bgr=True)
        assert fed[-1].dtype == np.uint8 and fed[-1].shape == (1, *reduced, 3)
        assert np.shares_memory(fed[-1], bgr) == (reduced == size)  # no reduction: the frame as it is
        # measured on the tiny model: cosine >= 0.999999, features within 2e-4 (uint8 rounding only)
        assert float((got.image_features * want.image_features).sum()) >= 0.99999
        assert np.abs(got.image_features - want.image_features).max() <= 2e-3
    with pytest.raises(RadaError, match="host_frame_reduction must be"):
        load_bundle(frames_bundle, backend="onnxruntime", device="cpu", host_frame_reduction="yes")


# ViT-B-32's config by default; the other resize modes (5 s each, mostly 4K frames) under -m slow.
@pytest.mark.parametrize("name", [n if n == "shortest" else pytest.param(n, marks=pytest.mark.slow) for n in CONFIGS])
def test_host_box_reduction_keeps_the_graph_output(graphs, name):
    """The graph fed the host-reduced frame: the same geometry and filter, only uint8 rounding apart."""
    cfg = CONFIGS[name]
    session = graphs(name)
    reduced_any = False
    for h, w in [(1080, 1920), (2160, 3840), (1200, 1600), (480, 640), (640, 480), (1000, 3000), (301, 199)]:
        g = fr.geometry(h, w, cfg)
        assert pp.resized_size(h, w, cfg) == g.resized
        ky, kx = fr.reduction_factor(h, g.resized[0]), fr.reduction_factor(w, g.resized[1])
        assert (pp.box_factor(h, g.resized[0], fr.REDUCING_GAP), pp.box_factor(w, g.resized[1], fr.REDUCING_GAP)) == (ky, kx)
        fy, fx = pp.host_box_factors(h, w, cfg, fr.REDUCING_GAP)
        assert ky % fy == 0 and kx % fx == 0
        frames = textured(h, w, h + w)[None]
        fed = pp.reduce_for_graph(frames, cfg, Frames())
        if (fy, fx) == (1, 1):
            assert fed is frames
            continue
        reduced_any = True
        assert fed.shape == (1, h // fy, w // fx, 3) and fr.geometry(h // fy, w // fx, cfg) == g
        exact_mean = frames.reshape(1, h // fy, fy, w // fx, fx, 3).mean(axis=(2, 4))
        assert np.abs(fed - exact_mean).max() <= 0.5  # rounded to the nearest level
        diff = np.abs(session.run(None, {"frames": fed})[0] - session.run(None, {"frames": frames})[0])
        # measured: at most 0.0075 (half a level of 255), mean at most 0.002
        assert diff.max() <= 0.012 and diff.mean() <= 0.003, (name, h, w, diff.max())
    assert reduced_any


def test_box_reduce_without_opencv_matches(monkeypatch):
    """Pillow's reduce, where OpenCV is missing: the same rounded block means, 1, 3 or 4 channels."""
    frames = np.stack([textured(216, 384, s) for s in range(2)])
    for channels in (1, 3, 4):
        batch = np.ascontiguousarray(np.concatenate([frames, frames[..., :1]], axis=3)[..., :channels])
        exact = batch.reshape(2, 54, 4, 192, 2, channels).mean(axis=(2, 4))
        with_cv = pp.box_reduce(batch, 4, 2)
        monkeypatch.setattr(pp, "_opencv", lambda: None)
        with_pil = pp.box_reduce(batch, 4, 2)
        monkeypatch.undo()
        assert with_cv.shape == with_pil.shape == (2, 54, 192, channels)
        assert np.abs(with_cv - exact).max() <= 0.5 and np.abs(with_pil - exact).max() <= 0.5


@pytest.mark.parametrize("bad,match", [
    (np.zeros((64, 64, 3), np.float32), "expected a preprocessed float32 batch"),
    (np.zeros((64, 64, 3), np.uint16), "uint8.*dtype uint16"),
    (np.zeros((64, 64, 2), np.uint8), "2 channels"),
    (np.zeros((2, 2, 64, 64, 3), np.uint8), "one frame"),
    (np.zeros((0, 64, 3), np.uint8), "non-empty"),
    (np.zeros((0, 64, 64, 3), np.uint8), "non-empty"),
    (np.zeros((64, 5000, 3), np.uint8), "5000x64 is outside the bundle's range"),
])
def test_bad_frames_are_refused_clearly(frames_bundle, bad, match):
    from rada_export.runtimes.runtime import load_bundle

    rt = load_bundle(frames_bundle, backend="onnxruntime", device="cpu")
    with pytest.raises(RadaError, match=match):
        rt.predict(bad, bgr=True)


def test_fixed_frame_size_is_enforced():
    cfg = Frames(channel_order="rgb", height=[1080] * 3, width=[1920] * 3)
    frame = np.zeros((1080, 1920, 3), np.uint8)
    assert np.shares_memory(pp.graph_frames(frame, cfg), frame)
    with pytest.raises(RadaError, match="takes 1920x1080 frames .*fixed at export.*got 1280x720"):
        pp.graph_frames(np.zeros((720, 1280, 3), np.uint8), cfg)


def test_export_options_are_checked(tmp_path):
    assert parse_frame_size("1920x1080") == (1080, 1920)
    with pytest.raises(RadaError, match="WIDTHxHEIGHT"):
        parse_frame_size("1920-1080")
    with pytest.raises(RadaError, match="embed_preprocess=True") as err:
        export_bundle(ExportRequest(out=tmp_path / "a", model="rada-tiny-ViT", pretrained="none", classes=["a"], frame_size=(1080, 1920)))
    assert err.value.field == "frame_size"
    with pytest.raises(RadaError, match="channel order"):
        export_bundle(ExportRequest(out=tmp_path / "b", model="rada-tiny-ViT", pretrained="none", classes=["a"],
                                    embed_preprocess=True, channel_order="bgra"))


def test_cli_frame_options(tmp_path):
    result = subprocess.run([sys.executable, "-m", "rada_export.cli.app", "onnx", "--model", "rada-tiny-ViT", "--pretrained", "none",
                             "--classes", "a,b", "--out", str(tmp_path / "x"), "--frame-size", "1920by1080", "--embed-preprocess"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "--frame-size '1920by1080' is not WIDTHxHEIGHT" in result.stderr and "Traceback" not in result.stderr
    assert not Path(tmp_path / "x").exists()


def test_bench_frames_mode(frames_bundle):
    from rada_export.bench import run_bench_frames

    rows = run_bench_frames(frames_bundle, backends=["onnxruntime-cpu"], frames=["720p", "1080p"], repeats=2)
    assert {(r.precision, r.frame) for r in rows} == {(p, f) for p in ("fp32", "fp16", "int8") for f in ("720p", "1080p")}
    for r in rows:
        assert r.in_graph_resize and r.graph_ms > 0 and 0 <= r.host_ms < r.p50_ms
    with pytest.raises(RadaError, match="unknown frame size"):
        run_bench_frames(frames_bundle, frames=["8K"])
