"""Shared fixtures: a tiny open_clip model, the real DTD features, generated image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "clip-vitb-features" / "dtd"
TINY = "rada-tiny-ViT"


@pytest.fixture(autouse=True, scope="session")
def _one_blas_thread():
    """numpy's BLAS on one thread: the tests' matmuls are small, and on a shared 2-core machine a
    BLAS thread pool thrashes (the 10,000-frame TTA streams ran 8x slower with it)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture(scope="session")
def tiny_clip():
    from rada_export.clip import load_clip

    return load_clip(TINY, "none")


@pytest.fixture(scope="session")
def dtd():
    """Real CLIP ViT-B/16 features of DTD: train/val arrays and prototype text features."""
    if not (SHARED_DATA / "train.npz").is_file():
        pytest.skip(f"real CLIP features not found at {SHARED_DATA} (a checkout without ../shared)")
    from rada_export.train import class_prototypes

    train = np.load(SHARED_DATA / "train.npz")
    val = np.load(SHARED_DATA / "val.npz")
    data = {
        "train_x": train["feature_list"].astype(np.float32), "train_y": train["label_list"].astype(np.int64),
        "val_x": val["feature_list"].astype(np.float32), "val_y": val["label_list"].astype(np.int64),
    }
    data["protos"] = class_prototypes(data["train_x"], data["train_y"], 24).numpy()
    return data


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """A generated ImageFolder: 6 classes x 8 PNG images, 96 px."""
    from rada_export.synthetic import make_image_folder

    root = tmp_path_factory.mktemp("images")
    make_image_folder(root, images_per_class=8, size=96)
    return root


@pytest.fixture(scope="session")
def vit_b32_bundle(tmp_path_factory):
    """One full-size bundle (ViT-B-32, random weights, FP32 + FP16, verified), shared by the slow tests.

    Returns the ExportResult; its bundle folder is ``result.bundle``.
    """
    from rada_export.export.bundle import ExportRequest, export_bundle
    from rada_export.synthetic import CLASSES

    out = tmp_path_factory.mktemp("vit-b-32") / "bundle"
    return export_bundle(ExportRequest(out=out, model="ViT-B-32", pretrained="none", classes=[c[0] for c in CLASSES], fp16=True))


@pytest.fixture(scope="session")
def vit_b32_int8(vit_b32_bundle, tmp_path_factory):
    """The shared ViT-B-32 bundle with its fused graph calibrated to INT8; returns the CalibrateResult."""
    from rada_export.calibration.bundle import CalibrateRequest, calibrate_bundle
    from rada_export.synthetic import make_image_folder

    root = tmp_path_factory.mktemp("vit-b-32-calibration")
    make_image_folder(root / "images", images_per_class=5, size=240)
    return calibrate_bundle(CalibrateRequest(bundle=vit_b32_bundle.bundle, images=root / "images", samples=16, holdout=8,
                                             graph="model", cache_dir=root / "cache", accept_degraded=True))


def calibrate_for_tests(bundle: Path, work: Path) -> None:
    """Adds INT8 Q/DQ graphs to ``bundle`` from 32 seeded random images (for tests that need the graph,
    not its accuracy: calibration's own thresholds are tested in test_calibration.py)."""
    from PIL import Image

    from rada_export.calibration.bundle import CalibrateRequest, calibrate_bundle

    images = work / "calibration-images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(32):
        Image.fromarray(rng.integers(0, 256, size=(120, 160, 3), dtype=np.uint8)).save(images / f"{i}.png")
    calibrate_bundle(CalibrateRequest(bundle=bundle, images=images, samples=24, holdout=8, accept_degraded=True,
                                      cache_dir=work / "calibration-cache"))
