"""The frames graph: raw uint8 camera frames of any size in, the model's normalised pixels out.

open_clip resizes with Pillow: a separable, antialiased filter whose support grows with the
downscale factor (bicubic, a = -0.5, support 2 x factor). The graph reproduces that in two steps,
as Pillow's own ``resize(..., reducing_gap=2)`` does: an integer box reduction (Pillow's
``reduce``; here by the largest factor up to in / (out * 2) that divides the side, so no partial
block), then Pillow's antialiased filter on the reduced frame, as MatMuls whose weights the graph
computes from the frame's shape (libImaging/Resample.c's coefficients: centre (i + 0.5) * scale,
weights normalised over the taps inside the image). The filter is banded: the outputs go in blocks
of consecutive ones, each block a MatMul over the one window of pixels its taps fall in, not the
whole row. One graph takes every frame size, and the centre crop (or the padding of
``resize_mode="longest"``) is folded into the weights: the rows and columns a crop discards are
sliced off before the reduction and never filtered.

Why not ONNX ``Resize``: its ``antialias`` attribute (opset 18) is what would match Pillow, but
onnx-tensorrt's operator table (docs/operators.md, Resize) lists the coordinate transformation
and resize modes it takes and no antialias, and an aliased bicubic Resize of a 1080p frame
changes CLIP features on textured scenes. Everything used here is in that table (Cast, Shape,
Gather, Range on int, Reshape, Unsqueeze, Slice, Concat, Transpose, ReduceSum, ReduceMax, MatMul,
Clip, comparisons, elementwise). Mod is in that table too (FP32, FP16, INT32) but not needed:
x - (x // d) * d does the same with Div, Mul and Sub.

The sizes, offsets and box factors are shape tensors in TensorRT (int64 values computed from the
frame's Shape). TensorRT documents the layers that compute on shape tensors as Concatenation,
ElementWise, Gather, Identity and Reduce ("Dynamic Shapes: Advanced Topics", Layer Extensions For
Dynamic Shapes, docs.nvidia.com/deeplearning/tensorrt/10.16.1/inference-library/dynamic-shapes-advanced.html;
the same list in the 11.4.0 guide): Select (ONNX Where), Not and the unary layers (Neg, Abs) are
not in it. So the shape arithmetic here is element-wise integer arithmetic only (Add, Sub, Mul,
Div, Min, Max; comparisons made 0/1 integers by clipping a difference, ``_step``) and ReduceMax,
with the same integer results as comparisons and selects would give. The blocks' window starts
are such shape tensors too (one int64 vector, a Gather for each Slice); the graph has no Where.

TensorRT takes uint8 only as a network input or output, and the input must feed a Cast directly
(TensorRT developer guide, "Types and Precision": UINT8 "only as a network-level input or output";
onnx-tensorrt: "TensorRT does not support UINT8 types for intermediate tensors"): the frames feed
one Cast, and everything after it is float or int64 shape arithmetic.

The channel order (RGB or BGR, fixed at export) is a Gather on the channel axis of the small
output (indices [2, 1, 0] for BGR, clamped to C - 1), which also drops the alpha of 4-channel
BGRA/RGBA frames and repeats a grey channel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..runtimes.preprocess import keep_ratio_size, shortest_side_size

SCOPE = "/preprocess/"  # FP16 conversion and INT8 calibration keep this scope in float32
REDUCING_GAP = 2  # Pillow's reducing_gap: the filter step always downscales by at least this much
CUBIC_A = -0.5  # Pillow's bicubic
CHANNEL_ORDERS = ("rgb", "bgr")
FRAME_DIMS = ("frame_height", "frame_width", "frame_channels")
# Default (min, opt, max) frame sides of a graph exported without a fixed frame size: the TensorRT
# profile's range, so the engine's activations are sized for the max. Up to 4K UHD landscape
# (3840 x 2160) and 1080p portrait covers the usual camera modes (720p, 1080p, 1440p, 4K); the
# float Cast of a batch of 4 such BGRx frames is 4 x 2160 x 3840 x 4 x 4 B = 531 MB (plus 133 MB of
# uint8 input), half of the 4096 x 4096 range's 1.07 GB + 268 MB: buildable beside the ViT on an
# 8 GB Orin Nano, whose memory the GPU shares with the CPU. A camera's own size (`onnx --frame-size`)
# makes the smallest engine.
DEFAULT_FRAME_HEIGHT = (1, 1080, 2160)
DEFAULT_FRAME_WIDTH = (1, 1920, 3840)


@dataclass(frozen=True)
class FramesConfig:
    """What the frames input takes; recorded in the manifest's ``frames`` section."""

    channel_order: str = "rgb"  # of the frames the graph takes (BGR: OpenCV, GStreamer BGRx)
    frame_size: tuple[int, int] | None = None  # (height, width) fixed at export, else any

    def manifest_entry(self):
        from ..runtimes.manifest import Frames

        channel_indices(self.channel_order)  # validates
        if self.frame_size is None:
            return Frames(channel_order=self.channel_order, height=list(DEFAULT_FRAME_HEIGHT), width=list(DEFAULT_FRAME_WIDTH),
                          reducing_gap=REDUCING_GAP)
        height, width = self.frame_size
        return Frames(channel_order=self.channel_order, height=[height] * 3, width=[width] * 3, reducing_gap=REDUCING_GAP)


# ---------------------------------------------------------------------------------------------
# Geometry: the resized size and the crop offset of open_clip's eval transform


@dataclass(frozen=True)
class Geometry:
    resized: tuple[int, int]  # (height, width) Pillow resizes to
    offset: tuple[int, int]  # output pixel (i, j) is resized pixel (i + top, j + left); < 0: padding
    bicubic: bool  # open_clip's non-square "shortest" resize is bicubic whatever the config says


def geometry(height: int, width: int, cfg) -> Geometry:
    """open_clip's resize and crop/pad of a ``height`` x ``width`` image (runtimes.preprocess's rules)."""
    out_h, out_w = cfg.size
    mode = cfg.resize_mode
    bicubic = cfg.interpolation != "bilinear"
    if mode == "squash":
        return Geometry((out_h, out_w), (0, 0), bicubic)
    if mode == "longest":
        nh, nw = keep_ratio_size(height, width, out_h, out_w, longest=True)
        return Geometry((nh, nw), (-(max(out_h - nh, 0) // 2), -(max(out_w - nw, 0) // 2)), bicubic)
    if out_h == out_w:
        nh, nw = shortest_side_size(height, width, out_h)
    else:
        nh, nw = keep_ratio_size(height, width, out_h, out_w, longest=False)
        bicubic = True
    top = int(round((nh - out_h) / 2.0)) if nh >= out_h else -((out_h - nh) // 2)
    left = int(round((nw - out_w) / 2.0)) if nw >= out_w else -((out_w - nw) // 2)
    return Geometry((nh, nw), (top, left), bicubic)


# ---------------------------------------------------------------------------------------------
# The filter, as numpy (the reference the graph is tested against, and the torch module's plan)


@dataclass(frozen=True)
class AxisPlan:
    factor: int  # box reduction before the filter (divides the input length)
    reduced: int  # input length after the reduction
    matrix: np.ndarray  # reduced x out, float32: the filter's weights; zero columns where the output is padding
    valid: np.ndarray  # out, float32: 1 inside the resized image, 0 in longest-mode padding


# Box factors tried, largest first that divides the frame's side and does not exceed what the
# reducing gap allows: no partial block, so no crop of the frame before the reduction.
MAX_FACTOR = 16


def reduction_factor(in_size: int, resized: int, gap: float | None = None) -> int:
    """The largest k <= min(in / (out * gap), MAX_FACTOR) that divides ``in_size`` (Pillow: int(in / out / gap))."""
    gap = REDUCING_GAP if gap is None else gap
    limit = int(in_size / (resized * gap))
    return max([d for d in range(1, MAX_FACTOR + 1) if d <= limit and in_size % d == 0], default=1)


def _filter(u: np.ndarray, bicubic: bool) -> np.ndarray:
    a = CUBIC_A
    if not bicubic:
        return np.maximum(1.0 - u, 0.0)
    near = ((a + 2.0) * u - (a + 3.0)) * u * u + 1.0
    far = ((a * u - 5.0 * a) * u + 8.0 * a) * u - 4.0 * a
    return np.where(u < 1.0, near, np.where(u < 2.0, far, 0.0))


def axis_plan(in_size: int, resized: int, offset: int, out: int, bicubic: bool, gap: float | None = None) -> AxisPlan:
    """Pillow's antialiased resampling weights (libImaging/Resample.c, precompute_coeffs: centre
    (i + 0.5) * scale, support 2 * max(scale, 1), weights normalised over the taps inside the image)
    after the box reduction, as a dense matrix, for the ``out`` outputs that survive the crop."""
    k = reduction_factor(in_size, resized, gap)
    reduced = in_size // k
    scale = in_size / (k * resized)
    fs = max(scale, 1.0)
    q = np.arange(out, dtype=np.float64) + offset
    center = (q + 0.5) * scale
    xs = np.arange(reduced, dtype=np.float64)[:, None]
    w = _filter(np.abs(xs + 0.5 - center[None, :]) / fs, bicubic)
    valid = ((q >= 0) & (q < resized)).astype(np.float64)
    w = w * valid[None, :]
    w = w / np.maximum(w.sum(axis=0, keepdims=True), 1e-12)
    return AxisPlan(k, reduced, w.astype(np.float32), valid.astype(np.float32))


def channel_indices(channel_order: str) -> np.ndarray:
    if channel_order not in CHANNEL_ORDERS:
        from ..errors import RadaError

        raise RadaError(f"unknown channel order {channel_order!r}", "use rgb (PIL, most decoders) or bgr (OpenCV)")
    return np.array([0, 1, 2] if channel_order == "rgb" else [2, 1, 0], dtype=np.int64)


def reference_pixels(frames: np.ndarray, cfg, channel_order: str = "rgb") -> np.ndarray:
    """What the frames graph computes, in numpy float64: N x H x W x C uint8 -> N x 3 x h x w float32."""
    frames = np.asarray(frames)
    n, height, width, channels = frames.shape
    g = geometry(height, width, cfg)
    out_h, out_w = cfg.size
    py = axis_plan(height, g.resized[0], g.offset[0], out_h, g.bicubic)
    px = axis_plan(width, g.resized[1], g.offset[1], out_w, g.bicubic)
    x = frames.astype(np.float64).reshape(n, py.reduced, py.factor, px.reduced, px.factor, channels).mean(axis=(2, 4))
    x = np.clip(np.einsum("nhwc,wj->nhjc", x, px.matrix, optimize=True), 0, 255)  # Pillow clips each pass to 0-255
    x = np.clip(np.einsum("nhjc,hi->nijc", x, py.matrix, optimize=True), 0, 255)
    fill = float(getattr(cfg, "fill_color", 0) or 0)
    mask = py.valid[:, None, None] * px.valid[None, :, None]
    x = x * mask + fill * (1.0 - mask)
    x = x[..., np.minimum(channel_indices(channel_order), channels - 1)]
    mean = np.asarray(cfg.mean, dtype=np.float64)
    std = np.asarray(cfg.std, dtype=np.float64)
    return ((x / 255.0 - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# The ONNX graph


class _Builder:
    """Appends nodes under the /preprocess/ scope, naming their outputs after the nodes."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def const(self, value, dtype, name: str) -> str:
        self._count += 1
        tensor_name = f"{SCOPE}{name}_{self._count}"
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), tensor_name))
        return tensor_name

    def i64(self, value, name: str) -> str:
        return self.const(value, np.int64, name)

    def f32(self, value, name: str) -> str:
        return self.const(value, np.float32, name)

    def op(self, op_type: str, inputs: list[str], name: str | None = None, **attrs) -> str:
        self._count += 1
        node_name = f"{SCOPE}{name or op_type}_{self._count}"
        output = f"{node_name}_output_0"
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=node_name, **attrs))
        return output


def _scalar(b: _Builder, shape: str, index: int, name: str) -> str:
    return b.op("Gather", [shape, b.i64(index, f"{name}_index")], name, axis=0)


def _step(b: _Builder, d: str, zero: str, one: str) -> str:
    """1 where the int64 ``d`` > 0, else 0: min(max(d, 0), 1), element-wise arithmetic that TensorRT
    computes on shape tensors (a comparison would give a bool, and choosing with it a Select)."""
    return b.op("Min", [b.op("Max", [d, zero]), one])


def _neg(b: _Builder, x: str, zero: str) -> str:
    """-x as 0 - x: an element-wise Sub (a shape-tensor layer), not the unary Neg."""
    return b.op("Sub", [zero, x])


def _round_half_even(b: _Builder, p: str, q: str, one: str, two: str) -> str:
    """Python's round(p / q) for int64 scalars p >= 0, q > 0, in element-wise integer arithmetic:
    f + [2r > q] + [2r == q] * (f odd), with r = p - f q the remainder."""
    zero = b.i64(0, "rhe_zero")
    f = b.op("Div", [p, q])
    r2 = b.op("Mul", [b.op("Sub", [p, b.op("Mul", [f, q])]), two])
    odd = b.op("Sub", [f, b.op("Mul", [b.op("Div", [f, two]), two])])
    above = _step(b, b.op("Sub", [r2, q]), zero, one)  # 2r > q: round up
    differs = _step(b, b.op("Max", [b.op("Sub", [r2, q]), b.op("Sub", [q, r2])]), zero, one)  # |2r - q| >= 1
    tie = b.op("Sub", [one, differs])  # 2r == q: round to even
    return b.op("Add", [b.op("Add", [f, above]), b.op("Mul", [tie, odd])])


def _choose(b: _Builder, flag: str, if_one: str, if_zero: str, one: str) -> str:
    """``if_one`` where the 0/1 int64 ``flag`` is 1, else ``if_zero``: flag * a + (1 - flag) * b."""
    return b.op("Add", [b.op("Mul", [flag, if_one]), b.op("Mul", [b.op("Sub", [one, flag]), if_zero])])


def _graph_geometry(b: _Builder, height: str, width: str, cfg) -> tuple[str, str, str, str, bool]:
    """(resized h, resized w, top, left, bicubic) as int64 scalars, the rules of ``geometry``."""
    out_h, out_w = cfg.size
    one, two, zero = b.i64(1, "one"), b.i64(2, "two"), b.i64(0, "zero")
    th, tw = b.i64(out_h, "out_h"), b.i64(out_w, "out_w")
    bicubic = cfg.interpolation != "bilinear"
    mode = cfg.resize_mode
    if mode == "squash":
        return th, tw, zero, zero, bicubic

    def centre(n: str, target: str) -> str:
        # shortest: centre crop, round((n - target) / 2) half to even; smaller: pad (n < target)
        d = b.op("Sub", [n, target])
        crop = _round_half_even(b, b.op("Max", [d, zero]), two, one, two)
        pad = _neg(b, b.op("Div", [b.op("Max", [_neg(b, d, zero), zero]), two]), zero)
        return b.op("Add", [crop, pad])

    if mode == "shortest" and out_h == out_w:
        short = b.op("Min", [height, width])
        nh = b.op("Div", [b.op("Mul", [th, height]), short])
        nw = b.op("Div", [b.op("Mul", [tw, width]), short])
        return nh, nw, centre(nh, th), centre(nw, tw), bicubic
    # keep-ratio: ratio = min (shortest) or max (longest) of height/out_h, width/out_w
    # height/out_h > width/out_w, as 0/1: [height * out_w - width * out_h > 0]
    w_first = _step(b, b.op("Sub", [b.op("Mul", [height, tw]), b.op("Mul", [width, th])]), zero, one)
    longest = mode == "longest"
    by_height = b.op("Sub", [one, w_first]) if not longest else w_first
    nh = _choose(b, by_height, th, _round_half_even(b, b.op("Mul", [height, tw]), width, one, two), one)
    nw = _choose(b, by_height, _round_half_even(b, b.op("Mul", [width, th]), height, one, two), tw, one)
    if longest:
        top = _neg(b, b.op("Div", [b.op("Sub", [th, nh]), two]), zero)
        left = _neg(b, b.op("Div", [b.op("Sub", [tw, nw]), two]), zero)
        return nh, nw, top, left, bicubic
    return nh, nw, centre(nh, th), centre(nw, tw), True


def _filter_graph(b: _Builder, u: str, bicubic: bool) -> str:
    """The filter's weight at distances ``u`` >= 0. Bicubic without Where (ONNX Runtime's Where costs
    several times an arithmetic op on these (taps x outputs) matrices): the outer piece is 0 at
    u = 2 exactly, so it is evaluated at min(u, 2), and the inner piece replaces it under a 0/1 mask."""
    if not bicubic:
        return b.op("Max", [b.op("Sub", [b.f32(1.0, "f_one"), u]), b.f32(0.0, "f_zero")])
    a = CUBIC_A
    c = {name: b.f32(v, f"cubic_{name}") for name, v in
         {"a2": a + 2.0, "a3": a + 3.0, "a": a, "5a": 5.0 * a, "8a": 8.0 * a, "4a": 4.0 * a, "1": 1.0, "2": 2.0}.items()}
    t = b.op("Min", [u, c["2"]])
    near = b.op("Add", [b.op("Mul", [b.op("Sub", [b.op("Mul", [c["a2"], t]), c["a3"]]), b.op("Mul", [t, t])]), c["1"]])
    far = b.op("Sub", [b.op("Mul", [b.op("Add", [b.op("Mul", [b.op("Sub", [b.op("Mul", [c["a"], t]), c["5a"]]), t]), c["8a"]]), t]), c["4a"]])
    inner = b.op("Cast", [b.op("Less", [u, c["1"]])], to=TensorProto.FLOAT)
    return b.op("Add", [far, b.op("Mul", [inner, b.op("Sub", [near, far])])])


def _graph_factor(b: _Builder, in_size: str, resized: str, axis: str) -> str:
    """``reduction_factor`` in the graph: the largest divisor of in_size in 1..MAX_FACTOR within the limit."""
    gap = b.i64(REDUCING_GAP, f"{axis}_gap")
    limit = b.op("Div", [in_size, b.op("Mul", [resized, gap])])
    candidates = b.i64(np.arange(1, MAX_FACTOR + 1), f"{axis}_candidates")
    remainder = b.op("Sub", [in_size, b.op("Mul", [b.op("Div", [in_size, candidates]), candidates])])
    zero, one = b.i64(0, f"{axis}_zero"), b.i64(1, f"{axis}_one")
    # 0/1 integers, no bool: divides = [remainder == 0] (remainder >= 0), within = [candidate <= limit]
    divides = b.op("Sub", [one, _step(b, remainder, zero, one)])
    within = b.op("Sub", [one, _step(b, b.op("Sub", [candidates, limit]), zero, one)])
    chosen = _choose(b, b.op("Mul", [divides, within]), candidates, one, one)
    return b.op("ReduceMax", [chosen], f"{axis}_factor", keepdims=0)


# Outputs per block of the banded filter. Each output reads about 2 x support x scale taps, yet a
# dense (used pixels x outputs) matrix reads every used pixel for every output: 55 taps of the 550
# a 960 x 540 frame's centre crop uses, at 224 outputs. Blocks of consecutive outputs read one
# window of pixels each (their taps and the span between them), so the filter's multiply-adds fall
# 5 to 7 fold. Measured on 2 Xeon cores (ONNX Runtime, the preprocessing alone, two rounds): a
# host-reduced 1080p frame (960 x 540) took 3.47-3.59 ms with blocks of 32 outputs, 3.52-3.62 with
# 16, 3.66-3.83 with 48; a 224 x 224 frame 1.07, 1.21-1.24 and 1.29-1.33 ms.
BLOCK_OUTPUTS = 32


@dataclass(frozen=True)
class _GraphAxis:
    """One axis of the resize in the graph: names of int64 scalars (factor, lo, hi, window length)
    and tensors (block starts, weights, valid), and the static block layout."""

    factor: str  # the box reduction's factor
    lo: str  # the reduced pixels [lo, hi) that some output's filter reaches
    hi: str
    starts: list[str]  # each block's first pixel, counted from lo
    window: str  # pixels each block reads
    weights: str  # blocks x window x block outputs, float32
    valid: str  # out, float32: 1 inside the resized image, 0 in longest-mode padding
    out: int
    blocks: int
    block: int


def _block_layout(out: int) -> tuple[int, int]:
    """(blocks, outputs per block) covering ``out`` outputs, the blocks as even as can be."""
    blocks = -(-out // BLOCK_OUTPUTS)
    return blocks, -(-out // blocks)


def _graph_axis_plan(b: _Builder, in_size: str, resized: str, offset: str, out: int, bicubic: bool, axis: str) -> _GraphAxis:
    """``axis_plan`` in the graph, banded: the outputs in blocks of consecutive ones, each block's
    weights over one window of the reduced pixels its taps fall in (the same weights as the dense
    matrix, which is zero outside the windows)."""
    support = 2 if bicubic else 1
    blocks, block = _block_layout(out)
    k = _graph_factor(b, in_size, resized, axis)
    reduced = b.op("Div", [in_size, k], f"{axis}_reduced")
    one, two, zero = b.i64(1, f"{axis}_one_i"), b.i64(2, f"{axis}_two_i"), b.i64(0, f"{axis}_zero_i")

    # Integer bounds (shape arithmetic stays in int64): centre of output q is (2q + 1) * in / (2 k resized),
    # its filter reaches support * max(in / (k resized), 1) either side.
    kr = b.op("Mul", [k, resized])
    den = b.op("Mul", [two, kr])
    reach = b.op("Mul", [b.i64(2 * support, f"{axis}_2sup"), b.op("Max", [in_size, kr])])
    first = b.op("Add", [b.op("Mul", [two, offset]), one])
    last = b.op("Add", [b.op("Mul", [two, b.op("Add", [offset, b.i64(out - 1, f"{axis}_last")])]), one])
    lo = b.op("Max", [b.op("Div", [b.op("Sub", [b.op("Mul", [first, in_size]), reach]), den]), zero], f"{axis}_lo")
    hi_num = b.op("Add", [b.op("Mul", [last, in_size]), reach])
    hi = b.op("Min", [b.op("Add", [b.op("Div", [b.op("Add", [hi_num, den]), den]), one]), reduced], f"{axis}_hi")
    used = b.op("Sub", [hi, lo])

    # A block of `block` outputs spans (block - 1) * scale between its first and last centre, plus
    # the reach on either side; +3 covers the integer divisions' rounding. Fewer pixels than that
    # are used: the window is all of them.
    span = b.op("Add", [b.op("Mul", [b.i64(2 * (block - 1), f"{axis}_2span"), in_size]), b.op("Mul", [two, reach])])
    window = b.op("Min", [b.op("Add", [b.op("Div", [span, den]), b.i64(3, f"{axis}_slack")]), used], f"{axis}_window")
    # Each block's first tap, floor(centre - reach - 1/2), counted from lo and moved inside [0, used - window]:
    # a window moved that way still holds every tap of its block that lies in the image.
    q0 = b.op("Add", [b.op("Mul", [two, b.op("Add", [b.i64(np.arange(blocks) * block, f"{axis}_block_q"), offset])]), one])
    tap = b.op("Div", [b.op("Sub", [b.op("Sub", [b.op("Mul", [q0, in_size]), reach]), kr]), den])
    starts = b.op("Min", [b.op("Max", [b.op("Sub", [tap, lo]), zero]), b.op("Sub", [used, window])], f"{axis}_starts")
    start_list = [b.op("Gather", [starts, b.i64(i, f"{axis}_block_{i}")], f"{axis}_start", axis=0) for i in range(blocks)]

    f = lambda t: b.op("Cast", [t], to=TensorProto.FLOAT)  # noqa: E731
    scale = b.op("Div", [f(in_size), f(kr)], f"{axis}_scale")
    fs = b.op("Max", [scale, b.f32(1.0, f"{axis}_f_one")])
    half = b.f32(0.5, f"{axis}_half")
    zero_f = b.f32(0.0, f"{axis}_f_zero")
    # blocks x 1 x block: output q's centre; blocks x window x 1: the pixels its block reads
    q = b.op("Add", [b.f32((np.arange(blocks * block)).reshape(blocks, 1, block), f"{axis}_q"), f(offset)])
    center = b.op("Mul", [b.op("Add", [q, half]), scale])
    pixel = b.op("Add", [f(b.op("Add", [b.op("Unsqueeze", [starts, b.i64([1], f"{axis}_ax_b")]), lo])),
                         f(b.op("Range", [zero, window, one]))])
    pixel = b.op("Unsqueeze", [pixel, b.i64([2], f"{axis}_ax_w")])
    dist = b.op("Abs", [b.op("Sub", [b.op("Add", [pixel, half]), center])])  # blocks x window x block
    w = _filter_graph(b, b.op("Div", [dist, fs]), bicubic)
    inside = b.op("Cast", [b.op("And", [b.op("GreaterOrEqual", [q, zero_f]), b.op("Less", [q, f(resized)])])], to=TensorProto.FLOAT)
    w = b.op("Mul", [w, inside])
    total = b.op("ReduceSum", [w, b.i64([1], f"{axis}_ax1")], keepdims=1)
    w = b.op("Div", [w, b.op("Max", [total, b.f32(1e-12, f"{axis}_eps")])], f"{axis}_weights")
    # the same 0/1 per output, in output order, without the padding of the last block
    valid = b.op("Slice", [b.op("Reshape", [inside, b.i64([-1], f"{axis}_flat")]), b.i64([0], f"{axis}_v0"),
                           b.i64([out], f"{axis}_out")], f"{axis}_valid")
    return _GraphAxis(k, lo, hi, start_list, window, w, valid, out, blocks, block)


def _banded_filter(b: _Builder, x: str, plan: _GraphAxis, along: int, name: str) -> str:
    """``x`` (N, C, H, W) filtered along axis ``along`` (2: rows, 3: columns) to ``plan.out`` outputs.
    Per block: its window sliced out (Slice with shape-tensor starts) and one MatMul with its
    (window x block) weights, whose operands keep the other axes as they are (no transposes); the
    blocks' outputs are concatenated."""
    ax = b.i64([along], f"{name}_ax")
    u = lambda t: b.op("Unsqueeze", [t, b.i64([0], f"{name}_u0")])  # noqa: E731
    outputs = []
    for i, start in enumerate(plan.starts):
        window = b.op("Slice", [x, u(start), u(b.op("Add", [start, plan.window])), ax], f"{name}_window")
        weights = b.op("Gather", [plan.weights, b.i64(i, f"{name}_block_{i}")], f"{name}_weights", axis=0)  # window x block
        if along == 3:
            outputs.append(b.op("MatMul", [window, weights], f"filter_{name}"))  # N, C, H, block
        else:
            outputs.append(b.op("MatMul", [b.op("Transpose", [weights], perm=[1, 0]), window], f"filter_{name}"))  # N, C, block, W
    x = b.op("Concat", outputs, axis=along) if len(outputs) > 1 else outputs[0]
    if plan.blocks * plan.block != plan.out:
        x = b.op("Slice", [x, b.i64([0], f"{name}_s0"), b.i64([plan.out], f"{name}_s1"), ax], f"{name}_outputs")
    return x


def frames_graph(cfg, frames: FramesConfig, opset: int) -> onnx.ModelProto:
    """frames (uint8 N x H x W x C, C in 1, 3, 4) -> pixels (float32 N x 3 x h x w), normalised."""
    b = _Builder()
    out_h, out_w = cfg.size
    x = b.op("Cast", ["frames"], "cast_frames", to=TensorProto.FLOAT)  # first and only consumer of the uint8 input
    shape = b.op("Shape", [x])
    height, width, channels = (_scalar(b, shape, i, n) for i, n in ((1, "height"), (2, "width"), (3, "channels")))
    nh, nw, top, left, bicubic = _graph_geometry(b, height, width, cfg)
    py = _graph_axis_plan(b, height, nh, top, out_h, bicubic, "y")
    px = _graph_axis_plan(b, width, nw, left, out_w, bicubic, "x")
    ky, y_lo, y_hi, kx, x_lo, x_hi = py.factor, py.lo, py.hi, px.factor, px.lo, px.hi

    # Box reduction (Pillow's reduce) on the NHWC frame as it is. First one Slice keeps just the rows
    # and columns the filter reaches (a centre crop of a 16:9 frame drops 44 % of the columns), so
    # nothing after it touches the rest; then rows, a sum over a middle axis with a long contiguous
    # inner block (the fast pattern of a reduction kernel; ONNX Runtime's ReduceSum runs about twice
    # as fast as its ReduceMean, and at factor 1 this is the cost of a copy) ...
    u = lambda t: b.op("Unsqueeze", [t, b.i64([0], "u0")])  # noqa: E731
    minus_one = b.i64([-1], "minus_one")
    kc = b.op("Mul", [kx, channels])
    x = b.op("Reshape", [x, b.op("Concat", [minus_one, u(height), u(b.op("Mul", [width, channels]))], axis=0)])
    starts = b.op("Concat", [u(b.op("Mul", [y_lo, ky])), u(b.op("Mul", [x_lo, kc]))], axis=0)
    ends = b.op("Concat", [u(b.op("Mul", [y_hi, ky])), u(b.op("Mul", [x_hi, kc]))], axis=0)
    x = b.op("Slice", [x, starts, ends, b.i64([1, 2], "ax_used")], "used_pixels")
    used_h, used_w = b.op("Sub", [y_hi, y_lo]), b.op("Sub", [x_hi, x_lo])
    rows = b.op("Concat", [minus_one, u(ky), u(b.op("Mul", [used_w, kc]))], axis=0)
    x = b.op("ReduceSum", [b.op("Reshape", [x, rows]), b.i64([1], "ax_rows")], "box_rows", keepdims=0)  # N*h', w'*kx*C
    # ... then each run of kx pixels x C channels times a (kx*C) x C averaging matrix that also
    # divides by the ky rows summed (a reduction with a 3-float inner block crawls).
    lanes = b.op("Range", [b.i64(0, "l0"), kc, b.i64(1, "l1")])
    lane_channel = b.op("Sub", [lanes, b.op("Mul", [b.op("Div", [lanes, channels]), channels])])
    chans = b.op("Range", [b.i64(0, "c0"), channels, b.i64(1, "c1")])
    pick = b.op("Cast", [b.op("Equal", [b.op("Unsqueeze", [lane_channel, b.i64([1], "axl")]), chans])], to=TensorProto.FLOAT)
    average = b.op("Div", [pick, b.op("Cast", [b.op("Mul", [kx, ky])], to=TensorProto.FLOAT)])  # kx*C x C
    x = b.op("MatMul", [b.op("Reshape", [x, b.op("Concat", [minus_one, u(kc)], axis=0)]), average], "box_cols")
    reduced = b.op("Concat", [minus_one, u(used_h), u(used_w), u(channels)], axis=0)
    x = b.op("Transpose", [b.op("Reshape", [x, reduced])], "to_nchw", perm=[0, 3, 1, 2])  # N, C, used h', used w' (small)

    # The filter, banded: horizontal first as Pillow, clipped to 0-255 after each pass as Pillow.
    lo, hi = b.f32(0.0, "lo"), b.f32(255.0, "hi")
    x = b.op("Clip", [_banded_filter(b, x, px, 3, "x"), lo, hi])  # N, C, used h', out_w
    x = b.op("Clip", [_banded_filter(b, x, py, 2, "y"), lo, hi])  # N, C, out_h, out_w

    # Channel order, alpha dropped, grey repeated: a gather of 3 channels from the small output.
    order = b.op("Min", [b.i64(channel_indices(frames.channel_order), "channel_order"), b.op("Sub", [channels, b.i64(1, "c_one")])])
    x = b.op("Gather", [x, order], "channels", axis=1)
    if cfg.resize_mode == "longest":
        mask = b.op("Mul", [b.op("Unsqueeze", [py.valid, b.i64([1], "ax1m")]), px.valid])
        fill = b.f32(float(cfg.fill_color), "fill")
        x = b.op("Add", [b.op("Mul", [x, mask]), b.op("Mul", [fill, b.op("Sub", [b.f32(1.0, "m_one"), mask])])], "pad")
    std = np.asarray(cfg.std, dtype=np.float64)
    mean = np.asarray(cfg.mean, dtype=np.float64)
    x = b.op("Mul", [x, b.f32((1.0 / (255.0 * std)).reshape(1, 3, 1, 1), "scale")])
    b.op("Sub", [x, b.f32((mean / std).reshape(1, 3, 1, 1), "shift")], "normalize")
    b.nodes[-1].output[0] = "pixels"

    # Symbolic even with --frame-size: that fixes the TensorRT profile (manifest ``frames``), while
    # calibration and verification still feed model-size frames through the same graph.
    dims = ["batch", *FRAME_DIMS]
    graph = helper.make_graph(
        b.nodes, "frames_to_pixels",
        [helper.make_tensor_value_info("frames", TensorProto.UINT8, dims)],
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, out_h, out_w])],
        initializer=b.initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def prepend_frames(model: onnx.ModelProto, cfg, frames: FramesConfig) -> onnx.ModelProto:
    """``model`` (input ``pixels``) with the frames graph in front: its input becomes ``frames``."""
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    pre = frames_graph(cfg, frames, opset)
    graph = model.graph
    if [i.name for i in graph.input] != ["pixels"]:
        raise ValueError(f"expected a graph with one input 'pixels', got {[i.name for i in graph.input]}")
    merged = onnx.ModelProto()
    merged.CopyFrom(model)
    g = merged.graph
    nodes = list(pre.graph.node) + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(pre.graph.initializer)
    del g.input[:]
    g.input.extend(pre.graph.input)
    return merged
