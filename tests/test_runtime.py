"""The device runtime: parity with the PyTorch pipeline, classes on the device, TTA, bad input."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rada_export import RadaError
from rada_export.checkpoint import HeadMetadata, save_head
from rada_export.export.bundle import ExportRequest, export_bundle
from rada_export.head import RAdaHead
from rada_export.runtimes import TTAConfig, load_bundle

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["red circle", "green square", "blue triangle", "yellow star", "purple ring", "orange cross"]


@pytest.fixture(scope="module")
def torch_head(tiny_clip) -> RAdaHead:
    torch.manual_seed(1)
    head = RAdaHead(tiny_clip.embed_dim, logit_scale=tiny_clip.logit_scale)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.05)
    return head.eval()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_clip, torch_head) -> Path:
    root = tmp_path_factory.mktemp("rt")
    save_head(root / "head.safetensors", torch_head, HeadMetadata(embed_dim=64, model="rada-tiny-ViT", pretrained="none",
                                                                  class_names=CLASSES))
    out = root / "bundle"
    export_bundle(ExportRequest(out=out, ckpt=root / "head.safetensors", fp16=True), clip=tiny_clip)
    return out


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[Path]:
    """Real files of several sizes and modes."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    files = []
    for i, (mode, size, ext) in enumerate([("RGB", (120, 90), "png"), ("RGBA", (64, 64), "png"), ("L", (50, 130), "png"),
                                           ("CMYK", (200, 150), "jpg"), ("RGB", (33, 47), "jpg"), ("P", (80, 80), "png")]):
        arr = rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
        img = Image.fromarray(arr, "RGBA")
        img = img.convert(mode) if mode != "P" else img.convert("RGB").quantize(64)
        path = root / f"img{i}_{mode}.{ext}"
        img.save(path)
        files.append(path)
    return files


def pytorch_pipeline(clip, head, files, text):
    """open_clip preprocessing + encoder + head: the reference the runtime must equal."""
    with torch.no_grad():
        pixels = torch.stack([clip.preprocess(Image.open(f)) for f in files])
        feats = torch.nn.functional.normalize(clip.model.encode_image(pixels), dim=-1)
        return head(feats, text).numpy(), feats.numpy()


def test_predictions_equal_the_pytorch_pipeline(bundle, tiny_clip, torch_head, image_files):
    text = torch.from_numpy(np.load(bundle / "text_features.npy"))
    ref_logits, ref_feats = pytorch_pipeline(tiny_clip, torch_head, image_files, text)
    rt = load_bundle(bundle, backend="onnxruntime", device="cpu")
    for adapt_path in (False, True):  # fused graph; and encoder graph + numpy head (as after set_classes)
        if adapt_path:
            rt.set_classes(CLASSES)
        pred = rt.predict([str(f) for f in image_files])
        assert np.abs(pred.image_features - ref_feats).max() <= 1e-3
        assert (pred.labels == ref_logits.argmax(1)).all()
        assert np.abs(pred.logits - ref_logits).max() <= 1e-3 * max(1, np.abs(ref_logits).max())
        assert pred.probabilities.shape == (6, 6) and np.allclose(pred.probabilities.sum(1), 1, atol=1e-5)
    assert rt.backend == "onnxruntime-cpu"


def test_input_kinds_agree(bundle, image_files):
    rt = load_bundle(bundle, backend="onnxruntime", device="cpu")
    rgb = np.asarray(Image.open(image_files[0]).convert("RGB"))
    from_path = rt.predict(str(image_files[0]))
    from_pil = rt.predict(Image.open(image_files[0]))
    from_array = rt.predict(rgb)
    from_bgr = rt.predict(rgb[:, :, ::-1].copy(), bgr=True)
    from rada_export.runtimes.preprocess import preprocess

    from_batch = rt.predict(preprocess([rgb], rt.manifest.preprocess))
    for other in (from_pil, from_array, from_bgr, from_batch):
        assert np.abs(other.logits - from_path.logits).max() <= 1e-4
    top = from_path.top(3)
    assert len(top[0]) == 3 and top[0][0][0] == from_path.class_names[0]


def test_set_classes_equals_open_clip_text_features(bundle, tiny_clip):
    from rada_export.prompts import text_features

    rt = load_bundle(bundle, backend="onnxruntime", device="cpu")
    names = ["Café crème", "hot-dog #2", "数字 42", "a cat's toy"]
    templates = ["a photo of a {}.", "art of the {}!"]
    rt.set_classes(names, templates)
    ref = text_features(tiny_clip, names, templates).numpy()
    assert np.abs(rt.head.text_features - ref).max() <= 1e-5
    assert rt.predict(np.zeros((8, 8, 3), np.uint8)).logits.shape == (1, 4)
    assert rt.classes == names


def test_checksum_mismatch_and_missing_file_are_refused(bundle, tmp_path):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    (copy / "text_features.npy").write_bytes(b"tampered")
    with pytest.raises(RadaError, match="checksum mismatch.*text_features.npy"):
        load_bundle(copy)
    (copy / "text_features.npy").unlink()
    with pytest.raises(RadaError, match="missing: text_features.npy"):
        load_bundle(copy)
    with pytest.raises(RadaError, match="no manifest.json"):
        load_bundle(tmp_path)


def test_explicit_tensorrt_backend_without_engine_is_a_clear_error(bundle):
    with pytest.raises(RadaError, match="TensorRT"):
        load_bundle(bundle, backend="tensorrt")


@pytest.mark.parametrize("bad,expected", [
    (np.zeros((2, 3, 10, 10), np.float32), "3 x 64 x 64"),
    (np.full((1, 3, 64, 64), np.nan, np.float32), "NaN"),
    (np.zeros((0, 3, 64, 64), np.float32), "at least one"),
    ([], "empty"),
    (np.zeros((4, 4, 3), np.float64), "uint8"),
    (np.zeros((4, 4, 2), np.uint8), "3"),  # 4 channels are accepted: alpha dropped
    ("/no/such/image.png", "image.png"),
])
def test_bad_input_is_a_clear_error_and_the_runtime_stays_usable(bundle, bad, expected, image_files):
    rt = load_bundle(bundle, backend="onnxruntime", device="cpu", tta=TTAConfig(mode="continual"))
    with pytest.raises(RadaError) as err:
        rt.predict(bad, adapt=True)
    assert expected.lower() in str(err.value).lower()
    assert rt.predict(str(image_files[0])).logits.shape == (1, 6)


def test_unreadable_file_and_empty_class_list(bundle, tmp_path):
    rt = load_bundle(bundle, backend="onnxruntime", device="cpu")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(RadaError, match="broken.jpg"):
        rt.predict([str(broken)])
    for names in ([], ["a", "A"], ["ok", " "]):
        with pytest.raises(RadaError):
            rt.set_classes(names)
    assert rt.classes == CLASSES


def test_adapt_without_tta_settings(bundle):
    rt = load_bundle(bundle, backend="onnxruntime", device="cpu")
    with pytest.raises(RadaError, match="TTAConfig"):
        rt.predict(np.zeros((8, 8, 3), np.uint8), adapt=True)


def test_continual_and_episodic_predict(bundle, image_files):
    files = [str(f) for f in image_files]
    frozen = load_bundle(bundle, backend="onnxruntime", device="cpu").predict(files)
    rt = load_bundle(bundle, backend="onnxruntime", device="cpu", tta=TTAConfig(mode="continual"))
    first = rt.predict(files, adapt=True)
    assert np.abs(first.logits - frozen.logits).max() <= 1e-3  # logits come from before any update
    state = rt.state()
    rt.reset()
    assert np.abs(rt.predict(files).logits - frozen.logits).max() <= 1e-3
    rt.load_state(state)
    episodic = load_bundle(bundle, backend="onnxruntime", device="cpu", tta=TTAConfig(mode="episodic", views=8), seed=3)
    out = episodic.predict(files[:2], adapt=True)
    assert out.logits.shape == (2, 6)
    after = episodic.predict(files[:2])
    assert np.abs(after.logits - frozen.logits[:2]).max() <= 1e-3  # episodic resets: the deployed head again


def test_fresh_interpreter_never_imports_torch(bundle, image_files):
    code = f"""
import sys
from rada_export.runtimes import load_bundle, TTAConfig, Head
files = {[str(f) for f in image_files]!r}
rt = load_bundle({str(bundle)!r}, backend="onnxruntime", device="cpu")
rt.predict(files)
rt.set_classes(["cat", "dog"])
rt.predict(files)
load_bundle({str(bundle)!r}, device="cpu", tta=TTAConfig(mode="continual")).predict(files, adapt=True)
load_bundle({str(bundle)!r}, device="cpu", tta=TTAConfig(mode="episodic", views=4)).predict(files[:1], adapt=True)
Head.from_bundle({str(bundle)!r})
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "open_clip", "torchvision", "onnxconverter_common"))
leaked += sorted(m for m in sys.modules if m.startswith("rada_export.") and m.split(".")[1] in ("export", "clip", "head", "train", "checkpoint"))
assert not leaked, leaked
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_runtimes_source_imports_no_host_code():
    forbidden = ("torch", "open_clip", "torchvision", "onnxconverter_common", "safetensors.torch")
    host = ("rada_export.export", "rada_export.clip", "rada_export.head", "rada_export.train", "rada_export.checkpoint",
            "rada_export.features", "rada_export.prompts", "rada_export.train_job", "rada_export.tensorrt")
    for path in (REPO / "runtimes").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                assert not name.startswith(forbidden) and not name.startswith(host), f"{path.name} imports {name}"
