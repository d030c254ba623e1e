"""Image preprocessing for the device, equal to open_clip's eval transform, with numpy and Pillow.

open_clip's eval transform on a PIL image is: resize (Pillow, in the image's own mode), centre
crop or pad, convert to RGB, scale to [0, 1], normalise. Every step below calls the same Pillow
operation with the same arguments in the same order, so the pixels come out bit-identical; the
order matters because Pillow resizes RGBA premultiplied by alpha, resizes palette images with
nearest neighbour, and pads in the image's own mode (a CMYK pad of 0 is white once converted).

The configuration is the bundle manifest's ``preprocess`` section (``runtimes.manifest.Preprocess``,
which holds open_clip's ``model.visual.preprocess_cfg``); a dict with the same keys, or any object
with those attributes, works too.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from rada_export.errors import RadaError

RESIZE_MODES = ("shortest", "longest", "squash")
# open_clip maps anything but "bilinear" to bicubic at eval time ("random" is a training option).
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR, "random": Image.Resampling.BICUBIC}

ImageLike = Any  # str | os.PathLike | PIL.Image.Image | np.ndarray


@dataclass(frozen=True)
class _Spec:
    height: int
    width: int
    mean: np.ndarray  # float32, 3
    std: np.ndarray  # float32, 3
    resample: int
    resize_mode: str
    fill_color: int


def _field(cfg: Any, name: str, default: Any = None) -> Any:
    if isinstance(cfg, dict):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def _spec(cfg: Any) -> _Spec:
    if isinstance(cfg, _Spec):
        return cfg
    if cfg is None:
        raise RadaError("no preprocessing configuration given", "pass the bundle manifest's `preprocess` section")
    size = _field(cfg, "size")
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (int(size), int(size))
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        raise RadaError(
            f"preprocess size must be [height, width] of positive integers, got {size!r}",
            "re-export the bundle; its manifest's preprocess section is damaged",
        )
    mode = _field(cfg, "mode", "RGB")
    if mode != "RGB":
        raise RadaError(f"preprocess mode {mode!r} is not supported (only 'RGB')", "re-export the bundle with an RGB model")
    mean = _triple(_field(cfg, "mean"), "mean")
    std = _triple(_field(cfg, "std"), "std")
    if not np.all(np.isfinite(std)) or np.any(std == 0) or not np.all(np.isfinite(mean)):
        raise RadaError(f"preprocess std must be finite and non-zero, mean finite; got mean {mean}, std {std}", "re-export the bundle")
    interpolation = _field(cfg, "interpolation", "bicubic") or "bicubic"
    if interpolation not in _RESAMPLE:
        raise RadaError(
            f"preprocess interpolation {interpolation!r} is not supported",
            f"expected one of: {', '.join(_RESAMPLE)} (what open_clip accepts)",
        )
    resize_mode = _field(cfg, "resize_mode", "shortest") or "shortest"
    if resize_mode not in RESIZE_MODES:
        raise RadaError(f"preprocess resize_mode {resize_mode!r} is not supported", f"expected one of: {', '.join(RESIZE_MODES)}")
    fill = _field(cfg, "fill_color", 0)
    if isinstance(fill, bool) or not isinstance(fill, (int, np.integer)) or not 0 <= fill <= 255:
        raise RadaError(f"preprocess fill_color must be an integer 0-255, got {fill!r}", "re-export the bundle")
    return _Spec(int(size[0]), int(size[1]), mean, std, _RESAMPLE[interpolation], resize_mode, int(fill))


def _triple(value: Any, name: str) -> np.ndarray:
    # open_clip repeats a single value over the three channels.
    if isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
        value = [value] * 3
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.shape != (3,):
        raise RadaError(f"preprocess {name} must hold 3 numbers (one per RGB channel), got {value!r}", "re-export the bundle")
    return arr


# ---------------------------------------------------------------------------------------------
# Reading images


def load_image(path: str | os.PathLike) -> Image.Image:
    """The decoded image in its own mode (RGBA, P, CMYK... stay as they are until after resizing)."""
    path = Path(path)
    if not path.exists():
        raise RadaError(f"image {path} does not exist", "pass the path of an existing image file")
    if not path.is_file():
        raise RadaError(f"image path {path} is not a file", "pass the path of an image file, not a folder")
    try:
        with Image.open(path) as img:
            img.load()
            return img
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise RadaError(
            f"image {path} cannot be read ({type(err).__name__}: {err})",
            "pass a readable JPEG, PNG, WebP, BMP, GIF or TIFF file",
        ) from err


def _describe(arr: np.ndarray) -> str:
    return f"a {arr.dtype} array of shape {tuple(arr.shape)}"


# Pillow's raw decoder unpacks straight into its own RGB storage, so BGR and 4-channel frames cost
# no extra copy: the channel swap and the alpha drop happen in the one copy Pillow makes anyway.
_RAWMODES = {(3, False): "RGB", (3, True): "BGR", (4, False): "RGBX", (4, True): "BGRX"}


def _array_to_pil(arr: np.ndarray, bgr: bool) -> Image.Image:
    expected = "a uint8 H x W x 3 array (RGB, or BGR with bgr=True), H x W x 4 (alpha dropped) or a uint8 H x W grayscale array"
    if arr.dtype != np.uint8:
        fix = (
            "scale float images to 0-255 and cast: (img * 255).round().clip(0, 255).astype(np.uint8); "
            "an already-preprocessed float32 batch must be N x 3 x H x W, passed as the whole batch"
            if np.issubdtype(arr.dtype, np.floating)
            else "cast to uint8 (8 bits per channel)"
        )
        raise RadaError(f"expected {expected}, got {_describe(arr)}", fix)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise RadaError(f"expected {expected}, got {_describe(arr)}", "pass one image at a time, or a list of images")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise RadaError(f"expected a non-empty image, got {_describe(arr)}", "pass an image with at least one pixel")
    arr = np.ascontiguousarray(arr)
    size = (arr.shape[1], arr.shape[0])
    if arr.ndim == 2:
        return Image.frombytes("L", size, arr, "raw", "L")
    return Image.frombytes("RGB", size, arr, "raw", _RAWMODES[(arr.shape[2], bool(bgr))])


def _as_pil(item: ImageLike, bgr: bool = False) -> Image.Image:
    """Any accepted input as a PIL image, in its own mode (no RGB conversion yet)."""
    if isinstance(item, Image.Image):
        if item.width == 0 or item.height == 0:
            raise RadaError(f"expected a non-empty image, got a {item.mode} image of size {item.size}", "pass an image with at least one pixel")
        return item
    if isinstance(item, (str, os.PathLike)):
        return load_image(item)
    if isinstance(item, np.ndarray):
        return _array_to_pil(item, bgr)
    raise RadaError(
        f"expected an image (a path, a PIL image, or a uint8 H x W x 3 numpy array), got {type(item).__name__}",
        "pass images as file paths, PIL images or uint8 arrays",
    )


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as err:
        raise RadaError(
            f"a {img.mode} image cannot be converted to RGB ({err})", "convert the image to RGB before passing it"
        ) from err


def to_pil(item: ImageLike, bgr: bool = False) -> Image.Image:
    """An RGB PIL image from a path, a PIL image of any mode, or a uint8 array.

    Like open_clip, other modes are converted with Pillow's ``convert("RGB")``: alpha is dropped
    (not composited on a background), 16-bit images saturate at 255. Note that preprocess() and
    frames_uint8() resize *before* this conversion, as open_clip does.
    """
    return _to_rgb(_as_pil(item, bgr))


# ---------------------------------------------------------------------------------------------
# Geometry


# Pillow's reducing_gap for the fast host path: an integer box reduction (Image.reduce) first, then
# the antialiased filter for the last factor of at least 2. Pillow's docs: the larger the gap, the
# closer to fair resampling; measured against open_clip's exact resize in benchmarks/RESULTS.md
# ("Camera frames").
FAST_REDUCING_GAP = 2.0


def _resize(img: Image.Image, height: int, width: int, resample: int, reducing_gap: float | None = None) -> Image.Image:
    if img.size == (width, height):
        return img
    return img.resize((width, height), resample, reducing_gap=reducing_gap)


def shortest_side_size(height: int, width: int, target: int) -> tuple[int, int]:
    """(height, width) after scaling the short side to ``target``."""
    # torchvision's Resize(int): the long side is truncated, not rounded.
    if width <= height:
        return int(target * height / width), target
    return target, int(target * width / height)


def keep_ratio_size(height: int, width: int, target_h: int, target_w: int, longest: bool) -> tuple[int, int]:
    """(height, width) after one scale for both sides that fits (longest) or covers the target."""
    # open_clip's ResizeKeepRatio: one scale for both sides, sides rounded half to even (Python round).
    ratio_h = height / target_h
    ratio_w = width / target_w
    ratio = max(ratio_h, ratio_w) if longest else min(ratio_h, ratio_w)
    return round(height / ratio), round(width / ratio)


def _pad(img: Image.Image, left: int, top: int, right: int, bottom: int, fill: int) -> Image.Image:
    bands = len(img.getbands())
    # One fill value per band in the image's own mode: for RGBA that makes the pad's alpha `fill`
    # too, for P it is a palette index, for CMYK it is (fill,)*4 (white when fill is 0).
    color: Any = float(fill) if img.mode == "F" else int(fill)
    if bands > 1:
        color = (color,) * bands
    if img.mode == "P":
        palette = img.getpalette()
        out = ImageOps.expand(img, border=(left, top, right, bottom), fill=color)
        out.putpalette(palette)
        return out
    return ImageOps.expand(img, border=(left, top, right, bottom), fill=color)


def _center_crop_or_pad(img: Image.Image, height: int, width: int, fill: int) -> Image.Image:
    img_w, img_h = img.size
    if width > img_w or height > img_h:
        # The odd pixel of padding goes right / bottom.
        pad_w = max(width - img_w, 0)
        pad_h = max(height - img_h, 0)
        img = _pad(img, pad_w // 2, pad_h // 2, (pad_w + 1) // 2, (pad_h + 1) // 2, fill)
        img_w, img_h = img.size
        if (img_w, img_h) == (width, height):
            return img
    # Python's round (half to even), as torchvision: an odd excess of 1 crops from the right.
    top = int(round((img_h - height) / 2.0))
    left = int(round((img_w - width) / 2.0))
    return img.crop((left, top, left + width, top + height))


def resize_to_input(img: Image.Image, cfg: Any, fast: bool = False) -> Image.Image:
    """The image at the model's input size, RGB, before normalisation (open_clip's geometry).

    - shortest: scale the short side to the input size, centre crop (square inputs: torchvision
      Resize(int), long side truncated; non-square: open_clip's keep-ratio resize, which is always
      bicubic whatever the configured interpolation, sides rounded);
    - longest: scale the long side to the input size, pad with fill_color centred;
    - squash: resize to the input size, ignoring the aspect ratio.

    ``fast``: Pillow's ``reducing_gap`` (FAST_REDUCING_GAP) for large downscales, much cheaper on
    camera frames and close to, not equal to, open_clip's resize.
    """
    spec = _spec(cfg)
    gap = FAST_REDUCING_GAP if fast else None
    if not isinstance(img, Image.Image):
        img = _as_pil(img)
    height, width = spec.height, spec.width
    new_h, new_w = resized_size(img.height, img.width, spec)
    if spec.resize_mode == "squash":
        img = _resize(img, height, width, spec.resample, gap)
    elif spec.resize_mode == "longest":
        img = _resize(img, new_h, new_w, spec.resample, gap)
        img = _center_crop_or_pad(img, height, width, spec.fill_color)
    else:
        # open_clip's non-square keep-ratio resize is bicubic whatever the configured interpolation.
        resample = spec.resample if height == width else Image.Resampling.BICUBIC
        img = _resize(img, new_h, new_w, resample, gap)
        # torchvision's CenterCrop pads with 0 whatever fill_color says.
        img = _center_crop_or_pad(img, height, width, 0)
    return _to_rgb(img)


def resized_size(height: int, width: int, cfg: Any) -> tuple[int, int]:
    """(height, width) open_clip resizes a ``height`` x ``width`` image to, before the crop or pad."""
    spec = _spec(cfg)
    if spec.resize_mode == "squash":
        return spec.height, spec.width
    if spec.resize_mode == "longest":
        return keep_ratio_size(height, width, spec.height, spec.width, longest=True)
    if spec.height == spec.width:
        return shortest_side_size(height, width, spec.height)
    return keep_ratio_size(height, width, spec.height, spec.width, longest=False)


# ---------------------------------------------------------------------------------------------
# Pixels


def normalize(frames: np.ndarray, cfg: Any) -> np.ndarray:
    """uint8 H x W x 3 -> float32 3 x H x W (or N x H x W x 3 -> N x 3 x H x W): /255, -mean, /std.

    Each step in float32, in open_clip's order, so the result is bit-identical to ToTensor +
    Normalize.
    """
    spec = _spec(cfg)
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim not in (3, 4) or frames.shape[-1] != 3:
        got = _describe(frames) if isinstance(frames, np.ndarray) else type(frames).__name__
        raise RadaError(
            f"normalize expects uint8 frames of shape H x W x 3 or N x H x W x 3 (RGB), got {got}",
            "resize the images first with frames_uint8() or resize_to_input()",
        )
    x = np.moveaxis(frames, -1, -3).astype(np.float32)
    x /= np.float32(255.0)
    x -= spec.mean[:, None, None]
    x /= spec.std[:, None, None]
    return np.ascontiguousarray(x)


def image_list(images: Any) -> list[Any]:
    """One image, a list of images or a uint8 N x h x w x 3 batch, as a list of images; an empty
    list or batch is refused."""
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise RadaError("expected at least one image, got an empty list", "pass one image or a non-empty list of images")
        return list(images)
    if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4:
        if images.shape[0] == 0:
            raise RadaError(f"expected at least one image, got {_describe(images)}", "pass a non-empty batch")
        return list(images)
    return [images]


def _frame(item: Any, spec: _Spec, bgr: bool, fast: bool = False) -> np.ndarray:
    if isinstance(item, np.ndarray) and np.issubdtype(item.dtype, np.floating):
        raise RadaError(
            f"expected images to make uint8 frames from, got {_describe(item)}",
            "pass images (paths, PIL images, uint8 H x W x 3 arrays); normalised float batches cannot be turned back into frames",
        )
    return np.asarray(resize_to_input(_as_pil(item, bgr), spec, fast=fast and isinstance(item, np.ndarray)), dtype=np.uint8)


def frames_uint8(images: Any, cfg: Any, bgr: bool = False, fast: bool = False) -> np.ndarray:
    """uint8 N x H x W x 3 RGB frames at the model's input size, not normalised.

    For a fused graph that normalises inside; ``images`` is one image or a list (paths, PIL images,
    uint8 arrays), or a uint8 N x h x w x 3 batch. ``fast``: arrays (camera frames) are resized
    with Pillow's reducing_gap, see ``resize_to_input``; paths and PIL images stay exact.
    """
    spec = _spec(cfg)
    return np.stack([_frame(item, spec, bgr, fast) for item in image_list(images)])


def _check_float_batch(batch: np.ndarray, spec: _Spec) -> np.ndarray:
    given = _describe(batch)
    expected = (
        f"a preprocessed float32 batch N x 3 x {spec.height} x {spec.width} (or 3 x {spec.height} x {spec.width}), "
        "or images as uint8 H x W x 3 arrays"
    )
    if batch.ndim == 3:
        batch = batch[None]
    if batch.ndim != 4 or batch.shape[1:] != (3, spec.height, spec.width):
        if batch.ndim == 4 and batch.shape[-1] == 3:
            fix = "a float image must be scaled to 0-255 and cast: (img * 255).round().clip(0, 255).astype(np.uint8)"
        else:
            fix = "pass raw images (paths, PIL images, uint8 arrays) to have them resized and normalised"
        raise RadaError(f"expected {expected}, got {given}", fix)
    if batch.shape[0] == 0:
        raise RadaError(f"expected at least one image, got {_describe(batch)}", "pass a non-empty batch")
    batch = batch.astype(np.float32, copy=False)
    finite = np.isfinite(batch)
    if not finite.all():
        bad = int(batch.size - finite.sum())
        raise RadaError(
            f"the preprocessed batch holds {bad} NaN or infinite value(s) (expected finite float32 pixels)",
            "check the code that produced the batch; normalised CLIP pixels lie roughly within [-2, 3]",
        )
    return np.ascontiguousarray(batch)


def preprocess(images: Any, cfg: Any, bgr: bool = False, fast: bool = False) -> np.ndarray:
    """float32 N x 3 x H x W, as open_clip's eval transform would give, stacked.

    ``images``: one image or a list of them (paths, PIL images of any mode, uint8 H x W x 3 RGB
    arrays, BGR with ``bgr=True``, uint8 H x W grayscale), a uint8 N x h x w x 3 batch, or an
    already-preprocessed float N x 3 x H x W (or 3 x H x W) batch, which is only checked.
    ``fast``: arrays (camera frames) are resized with Pillow's reducing_gap (``resize_to_input``).
    """
    spec = _spec(cfg)
    if isinstance(images, np.ndarray) and np.issubdtype(images.dtype, np.floating):
        return _check_float_batch(images, spec)
    out = []
    for item in image_list(images):
        if isinstance(item, np.ndarray) and np.issubdtype(item.dtype, np.floating):
            if item.ndim != 3:
                raise RadaError(
                    f"a list item is {_describe(item)}; expected single preprocessed images 3 x {spec.height} x {spec.width}",
                    "pass a batch as the array itself, not inside a list",
                )
            out.append(_check_float_batch(item, spec)[0])
            continue
        out.append(normalize(_frame(item, spec, bgr, fast), spec))
    return np.stack(out)


# ---------------------------------------------------------------------------------------------
# Frames for a graph that preprocesses itself (exported with embed_preprocess)


def graph_frames(images: Any, frames_cfg: Any, bgr: bool = False) -> np.ndarray:
    """A uint8 frame (H x W, H x W x C) or batch (N x H x W x C) as the frames graph takes it.

    The array itself (a view) when it is contiguous and in the graph's channel order: no resize,
    no float conversion, no channel copy; otherwise one copy (reordered channels, or contiguous).
    C is 1 (grey), 3, or 4 (BGRA/RGBA: the graph drops alpha). ``frames_cfg`` is the manifest's
    ``frames`` section (runtimes.manifest.Frames).
    """
    expected = "uint8 camera frames: H x W x 3 (RGB, or BGR with bgr=True), H x W x 4 (alpha dropped), H x W grey, or a batch N x H x W x C"
    if not isinstance(images, np.ndarray):
        raise RadaError(f"expected {expected}, got {type(images).__name__}", "pass the frame as a numpy array")
    arr = images
    if arr.dtype != np.uint8:
        raise RadaError(f"expected {expected}, got {_describe(arr)}",
                        "pass the camera's 8-bit frame as it comes (OpenCV and GStreamer give uint8); scale float images to 0-255 and cast to uint8")
    if arr.ndim == 2:
        arr = arr[None, :, :, None]
    elif arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise RadaError(f"expected {expected}, got {_describe(images)}", "pass one frame (H x W x C) or a batch of equal-size frames (N x H x W x C)")
    n, height, width, channels = arr.shape
    if channels not in (1, 3, 4):
        raise RadaError(f"expected {expected}, got {_describe(images)} ({channels} channels)",
                        "pass 1 (grey), 3 (RGB/BGR) or 4 (RGBA/BGRA) channels in the last axis")
    if n == 0 or height == 0 or width == 0:
        raise RadaError(f"expected a non-empty frame, got {_describe(images)}", "pass a frame with at least one pixel")
    lo_h, _, hi_h = frames_cfg.height
    lo_w, _, hi_w = frames_cfg.width
    if not (lo_h <= height <= hi_h and lo_w <= width <= hi_w):
        if lo_h == hi_h and lo_w == hi_w:
            problem = f"the bundle takes {lo_w}x{lo_h} frames (a frame size fixed at export), got {width}x{height}"
            fix = (f"resize the camera to {lo_w}x{lo_h}, or re-export the bundle with a frame size of {width}x{height} "
                   "(or with none, for frames of any size)")
        else:
            problem = f"frame {width}x{height} is outside the bundle's range {lo_w}x{lo_h} to {hi_w}x{hi_h}"
            fix = f"pass frames of at most {hi_w}x{hi_h}, or re-export the bundle with a frame size of {width}x{height}"
        raise RadaError(problem, fix)
    if channels >= 3 and bool(bgr) != (frames_cfg.channel_order == "bgr"):
        # The graph's order is fixed at export: reorder here (one copy, alpha dropped with it).
        arr = arr[..., 2::-1]
    return np.ascontiguousarray(arr)


# ---------------------------------------------------------------------------------------------
# The frames graph's box reduction, done on the host (CPU backends)

# The frames graph (rada_export/export/frames.py) first averages ky x kx blocks, k the largest
# divisor of the side up to min(side / (resized side * reducing gap), MAX_BOX_FACTOR), then filters
# the reduced frame. On a CPU that averaging costs more in the graph (the whole frame cast to float,
# then reduced) than in a SIMD box filter on the uint8 frame. Fed the averaged frame, the graph sees
# the same geometry and reduces by the rest of k, so only the rounding of the averages to uint8
# (at most half a level, as Pillow's own reduce rounds) separates the two.
MAX_BOX_FACTOR = 16


def box_factor(in_size: int, resized: int, gap: float) -> int:
    """The frames graph's box factor for one side: the largest k <= min(in / (resized * gap), 16) dividing ``in_size``."""
    limit = min(int(in_size / (resized * gap)), MAX_BOX_FACTOR)
    return max((d for d in range(1, limit + 1) if in_size % d == 0), default=1)


def _box_factors(height: int, width: int, spec: _Spec, gap: float) -> tuple[int, int]:
    resized_h, resized_w = resized_size(height, width, spec)
    return box_factor(height, resized_h, gap), box_factor(width, resized_w, gap)


def host_box_factors(height: int, width: int, cfg: Any, gap: float) -> tuple[int, int]:
    """(fy, fx): the part of the frames graph's box reduction the host can do for a ``height`` x
    ``width`` frame with the graph's output unchanged (up to uint8 rounding); (1, 1) when none.

    The graph, fed the reduced frame, must find the same resized size (so the same crop and filter)
    and reduce by the rest of its factors. With both factors equal that always holds for the square
    shortest-side resize; otherwise (keep-ratio rounding, unequal factors) it is checked here.
    """
    spec = _spec(cfg)
    ky, kx = _box_factors(height, width, spec, gap)
    resized = resized_size(height, width, spec)
    common = [d for d in range(min(ky, kx), 1, -1) if ky % d == 0 and kx % d == 0]
    for fy, fx in [(ky, kx)] + [(d, d) for d in common]:
        if (fy, fx) == (1, 1):
            break
        h, w = height // fy, width // fx
        if resized_size(h, w, spec) == resized and _box_factors(h, w, spec, gap) == (ky // fy, kx // fx):
            return fy, fx
    return 1, 1


@functools.lru_cache(maxsize=1)
def _opencv():
    try:
        import cv2
    except ImportError:  # the video extra is not installed: Pillow's reduce does it, slower
        return None
    return cv2


# Pillow modes that reduce each band on its own (RGBA would be premultiplied by alpha).
_REDUCE_MODES = {1: "L", 3: "RGB", 4: "RGBX"}


def box_reduce(frames: np.ndarray, fy: int, fx: int) -> np.ndarray:
    """uint8 N x H x W x C frames averaged over fy x fx blocks (fy, fx divide H, W), rounded to uint8.

    OpenCV's INTER_AREA at an exact integer factor is this box average (SIMD); without OpenCV,
    Pillow's reduce computes the same averages.
    """
    n, height, width, channels = frames.shape
    h, w = height // fy, width // fx
    out = np.empty((n, h, w, channels), np.uint8)
    cv2 = _opencv()
    for i, frame in enumerate(frames):
        if cv2 is not None:
            # Written in place where OpenCV can (a copy less per frame); a result it made elsewhere is copied in.
            made = cv2.resize(frame, (w, h), dst=out[i], interpolation=cv2.INTER_AREA)
            if not np.shares_memory(made, out[i]):
                out[i] = made.reshape(h, w, channels)
        else:
            mode = _REDUCE_MODES[channels]
            image = Image.frombuffer(mode, (width, height), np.ascontiguousarray(frame), "raw", mode, 0, 1)
            out[i] = np.asarray(image.reduce((fx, fy))).reshape(h, w, channels)
    return out


def reduce_for_graph(frames: np.ndarray, cfg: Any, frames_cfg: Any) -> np.ndarray:
    """``graph_frames``' output with the graph's box reduction done on the host where it can be
    (``host_box_factors``); the array itself when there is none (frames near the model's size)."""
    _, height, width, _ = frames.shape
    fy, fx = host_box_factors(height, width, cfg, float(frames_cfg.reducing_gap))
    return frames if (fy, fx) == (1, 1) else box_reduce(frames, fy, fx)


def input_size(cfg: Any) -> tuple[int, int]:
    """(height, width) the model takes."""
    spec = _spec(cfg)
    return spec.height, spec.width


__all__ = [
    "RESIZE_MODES",
    "box_factor",
    "box_reduce",
    "frames_uint8",
    "graph_frames",
    "host_box_factors",
    "image_list",
    "input_size",
    "keep_ratio_size",
    "load_image",
    "normalize",
    "preprocess",
    "reduce_for_graph",
    "resize_to_input",
    "resized_size",
    "shortest_side_size",
    "to_pil",
]
