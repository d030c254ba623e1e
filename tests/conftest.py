"""Shared fixtures: a tiny open_clip model, the real DTD features, generated image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "clip-vitb-features" / "dtd"
TINY = "rada-tiny-ViT"


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
