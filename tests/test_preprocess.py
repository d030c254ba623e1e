"""The torch-free preprocessing equals open_clip's eval transform, and fails clearly on bad input."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest
from PIL import Image

from rada_export.errors import RadaError
from rada_export.runtimes import preprocess as pp
from rada_export.runtimes.manifest import Preprocess

open_clip = pytest.importorskip("open_clip")
from open_clip.transform import PreprocessCfg, image_transform_v2  # noqa: E402

TOL = 1e-5  # measured: 0.0 (bit-identical) for every case below

# (width, height): square, odd, landscape, portrait, smaller than the input, extreme ratios
SIZES = [(224, 224), (225, 225), (301, 199), (199, 301), (50, 31), (17, 640), (227, 224)]
MODES = ["RGB", "RGBA", "L", "CMYK", "P"]


def _random_image(rng: np.random.Generator, mode: str, width: int, height: int) -> Image.Image:
    # Smooth-ish content plus noise, so resampling filters and alpha premultiplication matter.
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([(xx * 7 + yy * 3) % 256, (xx * 2 + yy * 11) % 256, (xx * yy) % 256, (xx + yy * 5) % 256], -1)
    noise = rng.integers(-40, 41, size=base.shape)
    rgba = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGBA")
    if mode == "RGBA":
        return rgba
    if mode == "P":
        return rgba.convert("RGB").quantize(colors=48)
    return rgba.convert("RGB").convert(mode)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> dict[tuple[str, tuple[int, int]], str]:
    """Real files: JPEG for RGB, L and CMYK; PNG for RGBA and P."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("images")
    files = {}
    for mode in MODES:
        for width, height in SIZES:
            img = _random_image(rng, mode, width, height)
            suffix = "jpg" if mode in ("RGB", "L", "CMYK") else "png"
            path = root / f"{mode}_{width}x{height}.{suffix}"
            img.save(path, quality=90) if suffix == "jpg" else img.save(path)
            files[(mode, (width, height))] = str(path)
    return files


@pytest.fixture(scope="module")
def vit_b_32():
    model, _, transform = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    cfg = dict(model.visual.preprocess_cfg)
    del model
    return transform, cfg


@pytest.fixture(scope="module")
def manifest_cfg(vit_b_32) -> Preprocess:
    """The manifest section the exporter writes from model.visual.preprocess_cfg."""
    _, cfg = vit_b_32
    size = cfg["size"]
    size = [size, size] if isinstance(size, int) else list(size)
    return Preprocess(
        size=size,
        mode=cfg["mode"],
        mean=list(cfg["mean"]),
        std=list(cfg["std"]),
        interpolation=cfg["interpolation"],
        resize_mode=cfg["resize_mode"],
        fill_color=cfg["fill_color"],
    )


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def _open_clip_geometry(transform, img: Image.Image) -> np.ndarray:
    """open_clip's transform up to (and including) the RGB conversion, as uint8 H x W x 3."""
    for step in transform.transforms[:-2]:
        img = step(img)
    return np.asarray(img)


# ---------------------------------------------------------------------------------------------
# Equality with open_clip: ViT-B-32 (224, shortest side, bicubic)


@pytest.mark.parametrize("mode", MODES)
def test_vit_b_32_files_match_open_clip(vit_b_32, manifest_cfg, image_files, mode):
    transform, _ = vit_b_32
    paths = [image_files[(mode, size)] for size in SIZES]
    ours = pp.preprocess(paths, manifest_cfg)
    assert ours.dtype == np.float32 and ours.shape == (len(SIZES), 3, 224, 224)
    for path, got in zip(paths, ours):
        with Image.open(path) as img:
            expected = transform(img).numpy()
        assert _max_diff(got, expected) <= TOL, path


def test_vit_b_32_frames_match_open_clip_geometry(vit_b_32, manifest_cfg, image_files):
    transform, _ = vit_b_32
    for mode in MODES:
        for size in [(301, 199), (50, 31), (225, 225)]:
            path = image_files[(mode, size)]
            frames = pp.frames_uint8(path, manifest_cfg)
            assert frames.dtype == np.uint8 and frames.shape == (1, 224, 224, 3)
            with Image.open(path) as img:
                assert np.array_equal(frames[0], _open_clip_geometry(transform, img)), path
                resized = pp.resize_to_input(img, manifest_cfg)
            assert resized.mode == "RGB" and resized.size == (224, 224)
            assert np.array_equal(np.asarray(resized), frames[0])
            # what a fused graph computes inside from the frames
            assert np.array_equal(pp.normalize(frames[0], manifest_cfg), pp.preprocess(path, manifest_cfg)[0])


def test_cfg_forms_agree(vit_b_32, manifest_cfg, image_files):
    """The manifest dataclass, its dict, and open_clip's raw preprocess_cfg give the same pixels."""
    _, raw = vit_b_32
    path = image_files[("RGB", (301, 199))]
    a = pp.preprocess(path, manifest_cfg)
    assert np.array_equal(a, pp.preprocess(path, asdict(manifest_cfg)))
    assert np.array_equal(a, pp.preprocess(path, raw))
    assert np.array_equal(a, pp.preprocess(path, PreprocessCfg(**raw)))
    assert pp.input_size(manifest_cfg) == (224, 224)


# ---------------------------------------------------------------------------------------------
# Equality with open_clip: every resize mode, square and non-square inputs, both interpolations

MODE_CASES = [
    # (input size as open_clip takes it, resize_mode, interpolation, fill_color)
    (64, "shortest", "bicubic", 0),
    (64, "squash", "bicubic", 0),
    (64, "longest", "bicubic", 0),
    (64, "longest", "bilinear", 127),
    ((48, 64), "shortest", "bilinear", 0),  # open_clip: non-square shortest is always bicubic
    ((64, 48), "squash", "bilinear", 0),
    ((48, 64), "longest", "bicubic", 255),
    ((47, 33), "shortest", "bicubic", 0),
    ((47, 33), "longest", "bicubic", 9),
]


@pytest.mark.parametrize("size,resize_mode,interpolation,fill", MODE_CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}-fill{c[3]}" for c in MODE_CASES])
def test_resize_modes_match_open_clip(image_files, size, resize_mode, interpolation, fill):
    ocfg = PreprocessCfg(size=size, resize_mode=resize_mode, interpolation=interpolation, fill_color=fill)
    transform = image_transform_v2(ocfg, is_train=False)
    height, width = (size, size) if isinstance(size, int) else size
    cfg = Preprocess(
        size=[height, width], mode="RGB", mean=list(ocfg.mean), std=list(ocfg.std),
        interpolation=interpolation, resize_mode=resize_mode, fill_color=fill,
    )
    for mode in MODES:
        for img_size in [(301, 199), (199, 301), (50, 31), (17, 640), (225, 225)]:
            path = image_files[(mode, img_size)]
            with Image.open(path) as img:
                expected = transform(img).numpy()
                expected_frame = _open_clip_geometry(transform, img)
            got = pp.preprocess(path, cfg)[0]
            assert got.shape == (3, height, width)
            assert _max_diff(got, expected) <= TOL, (path, resize_mode)
            assert np.array_equal(pp.frames_uint8(path, cfg)[0], expected_frame), (path, resize_mode)


def test_longest_pads_with_fill_color():
    cfg = {"size": [32, 32], "mean": [0, 0, 0], "std": [1, 1, 1], "interpolation": "bicubic",
           "resize_mode": "longest", "fill_color": 200}
    wide = Image.new("RGB", (64, 16), (10, 20, 30))
    frame = pp.frames_uint8(wide, cfg)[0]
    assert frame.shape == (32, 32, 3)
    assert (frame[:12] == 200).all() and (frame[-12:] == 200).all()
    assert (frame[12:20] == (10, 20, 30)).all()


# ---------------------------------------------------------------------------------------------
# Arrays, BGR, modes


def test_uint8_arrays_rgb_bgr_and_gray(vit_b_32, manifest_cfg):
    transform, _ = vit_b_32
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(181, 263, 3), dtype=np.uint8)
    expected = transform(Image.fromarray(rgb)).numpy()
    assert _max_diff(pp.preprocess(rgb, manifest_cfg)[0], expected) <= TOL
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    assert np.array_equal(pp.preprocess(bgr, manifest_cfg, bgr=True), pp.preprocess(rgb, manifest_cfg))
    assert np.array_equal(pp.frames_uint8(bgr, manifest_cfg, bgr=True), pp.frames_uint8(rgb, manifest_cfg))
    assert not np.array_equal(pp.preprocess(bgr, manifest_cfg), pp.preprocess(rgb, manifest_cfg))
    assert np.array_equal(np.asarray(pp.to_pil(bgr, bgr=True)), rgb)

    gray = rng.integers(0, 256, size=(90, 140), dtype=np.uint8)
    expected_gray = transform(Image.fromarray(gray)).numpy()
    assert _max_diff(pp.preprocess(gray, manifest_cfg)[0], expected_gray) <= TOL
    assert _max_diff(pp.preprocess(gray[:, :, None], manifest_cfg)[0], expected_gray) <= TOL
    # bgr has no meaning for one channel
    assert np.array_equal(pp.preprocess(gray, manifest_cfg, bgr=True), pp.preprocess(gray, manifest_cfg))


def test_uint8_batch_and_mixed_list(manifest_cfg, image_files):
    rng = np.random.default_rng(2)
    batch = rng.integers(0, 256, size=(3, 100, 120, 3), dtype=np.uint8)
    out = pp.preprocess(batch, manifest_cfg)
    assert out.shape == (3, 3, 224, 224)
    for i in range(3):
        assert np.array_equal(out[i], pp.preprocess(batch[i], manifest_cfg)[0])
    path = image_files[("P", (50, 31))]
    with Image.open(path) as img:
        mixed = pp.preprocess([path, img, batch[0]], manifest_cfg)
    assert mixed.shape == (3, 3, 224, 224)
    assert np.array_equal(mixed[0], mixed[1])
    assert np.array_equal(mixed[2], out[0])
    assert pp.frames_uint8(batch, manifest_cfg).shape == (3, 224, 224, 3)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "CMYK", "I;16", "I", "F", "1"])
def test_to_pil_converts_like_open_clip(mode):
    img = _random_image(np.random.default_rng(3), "RGB", 20, 10).convert("L" if mode in ("I;16", "I", "F", "1") else "RGB")
    img = img.convert(mode) if mode != "I;16" else Image.fromarray(np.asarray(img).astype(np.uint16) * 200)
    rgb = pp.to_pil(img)
    assert rgb.mode == "RGB" and rgb.size == (20, 10)
    # MaybeConvertMode: Pillow's convert("RGB"), alpha dropped, no compositing
    assert np.array_equal(np.asarray(rgb), np.asarray(img.convert("RGB")))


def test_rgba_alpha_is_dropped_after_resize(vit_b_32, manifest_cfg):
    """Pillow resizes RGBA premultiplied: converting to RGB first would give other pixels."""
    transform, _ = vit_b_32
    rng = np.random.default_rng(4)
    arr = rng.integers(0, 256, size=(150, 170, 4), dtype=np.uint8)
    img = Image.fromarray(arr, "RGBA")
    ours = pp.preprocess(img, manifest_cfg)[0]
    assert _max_diff(ours, transform(img).numpy()) <= TOL
    assert _max_diff(ours, transform(img.convert("RGB")).numpy()) > 0.01


def test_load_image_keeps_mode(image_files):
    img = pp.load_image(image_files[("RGBA", (50, 31))])
    assert img.mode == "RGBA" and img.size == (50, 31)
    assert pp.to_pil(image_files[("CMYK", (50, 31))]).mode == "RGB"


def test_float_batch_is_validated_and_passed_through(manifest_cfg):
    rng = np.random.default_rng(5)
    batch = rng.standard_normal((2, 3, 224, 224)).astype(np.float32)
    out = pp.preprocess(batch, manifest_cfg)
    assert out.dtype == np.float32 and np.array_equal(out, batch)
    single = pp.preprocess(batch[0], manifest_cfg)
    assert single.shape == (1, 3, 224, 224) and np.array_equal(single[0], batch[0])
    as64 = pp.preprocess(batch.astype(np.float64), manifest_cfg)
    assert as64.dtype == np.float32 and np.array_equal(as64, batch)
    listed = pp.preprocess([batch[0], batch[1]], manifest_cfg)
    assert np.array_equal(listed, batch)


def test_normalize_shapes(manifest_cfg):
    frame = np.full((224, 224, 3), 255, dtype=np.uint8)
    one = pp.normalize(frame, manifest_cfg)
    assert one.shape == (3, 224, 224) and one.dtype == np.float32
    expected = (1.0 - np.float32(manifest_cfg.mean[0])) / np.float32(manifest_cfg.std[0])
    assert abs(one[0, 0, 0] - expected) < 1e-6
    assert pp.normalize(np.stack([frame, frame]), manifest_cfg).shape == (2, 3, 224, 224)


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    "bad,match",
    [
        (np.zeros((64, 64, 3), dtype=np.float32), r"N x 3 x 224 x 224.*uint8 H x W x 3.*float32 array of shape \(64, 64, 3\)"),
        (np.zeros((64, 64, 2), dtype=np.uint8), r"uint8 H x W x 3.*shape \(64, 64, 2\)"),  # 4 channels: alpha dropped (test_frames.py)
        (np.zeros((64, 64), dtype=np.float32), r"float32 batch N x 3 x 224 x 224.*float32 array of shape \(64, 64\)"),
        (np.zeros((64, 64, 3), dtype=np.int16), r"uint8 H x W x 3.*int16"),
        (np.zeros((0, 64, 3), dtype=np.uint8), r"non-empty image"),
        (np.zeros((2, 3, 100, 100), dtype=np.float32), r"N x 3 x 224 x 224.*\(2, 3, 100, 100\)"),
        (np.zeros((0, 3, 224, 224), dtype=np.float32), r"at least one image"),
        (np.zeros((0, 64, 64, 3), dtype=np.uint8), r"at least one image"),
        ([], r"at least one image, got an empty list"),
        (42, r"expected an image .* got int"),
        ([np.zeros((1, 3, 224, 224), dtype=np.float32)], r"single preprocessed images"),
    ],
    ids=["float-hwc", "2-channels", "2d-float", "int16", "zero-size", "wrong-size-batch", "empty-batch",
         "empty-uint8-batch", "empty-list", "int", "batch-in-list"],
)
def test_bad_arrays_and_items(manifest_cfg, bad, match):
    with pytest.raises(RadaError, match=match):
        pp.preprocess(bad, manifest_cfg)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_batch(manifest_cfg, value):
    batch = np.zeros((2, 3, 224, 224), dtype=np.float32)
    batch[1, 2, 10, 10] = value
    with pytest.raises(RadaError, match="1 NaN or infinite"):
        pp.preprocess(batch, manifest_cfg)


def test_missing_and_unreadable_paths(tmp_path, manifest_cfg):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(RadaError, match="does not exist") as err:
        pp.preprocess(str(missing), manifest_cfg)
    assert str(missing) in str(err.value)
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"definitely not a jpeg")
    for call in (lambda: pp.load_image(garbage), lambda: pp.preprocess([garbage], manifest_cfg),
                 lambda: pp.frames_uint8(garbage, manifest_cfg), lambda: pp.to_pil(garbage)):
        with pytest.raises(RadaError, match="cannot be read") as err:
            call()
        assert str(garbage) in str(err.value)
    truncated = tmp_path / "truncated.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(RadaError, match="cannot be read"):
        pp.load_image(truncated)
    with pytest.raises(RadaError, match="not a file"):
        pp.load_image(tmp_path)


def test_frames_refuse_float_input(manifest_cfg):
    with pytest.raises(RadaError, match="expected images to make uint8 frames from, got a float32 array"):
        pp.frames_uint8(np.zeros((3, 224, 224), dtype=np.float32), manifest_cfg)


@pytest.mark.parametrize("bad", [np.zeros((224, 224, 3), dtype=np.float32), np.zeros((3, 224, 224), dtype=np.uint8), [1, 2]])
def test_normalize_refuses_non_frames(manifest_cfg, bad):
    with pytest.raises(RadaError, match="uint8 frames"):
        pp.normalize(bad, manifest_cfg)


@pytest.mark.parametrize(
    "change,match",
    [
        ({"resize_mode": "crop"}, "resize_mode"),
        ({"interpolation": "lanczos"}, "interpolation"),
        ({"size": [224]}, "size"),
        ({"size": [0, 224]}, "size"),
        ({"mean": [0.5, 0.5]}, "mean"),
        ({"std": [0.5, 0.0, 0.5]}, "std"),
        ({"mode": "BGR"}, "mode"),
        ({"fill_color": 300}, "fill_color"),
    ],
)
def test_bad_config(manifest_cfg, change, match):
    cfg = {**asdict(manifest_cfg), **change}
    with pytest.raises(RadaError, match=match):
        pp.preprocess(np.zeros((10, 10, 3), dtype=np.uint8), cfg)


def test_import_leaves_torch_out():
    code = (
        "import sys, rada_export.runtimes.preprocess; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip', 'torchvision')); "
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
