"""Shared fixtures: a tiny open_clip model, the real DTD features, generated image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "clip-vitb-features" / "dtd"
TINY = "rada-tiny-ViT"


def pytest_configure(config):
    import tiny_families

    tiny_families.register()  # the tiny family configs, before any test builds a model


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
def shared_tiny_bundle(tmp_path_factory, tiny_clip):
    """Tiny bundles exported once per session and shared between test modules:
    ``shared_tiny_bundle(classes=[...], fp16=True, ...)`` is the folder of the rada-tiny-ViT bundle
    (random weights) exported with those ExportRequest settings. Read it, never write it: tests that
    change a bundle copy it first, and the session fails at its end if a shared bundle changed."""
    from rada_export.export.bundle import ExportRequest, export_bundle

    made: dict[tuple, tuple[Path, dict[str, bytes]]] = {}

    def get(**settings) -> Path:
        key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in settings.items()))
        if key not in made:
            out = tmp_path_factory.mktemp("shared-bundle") / "bundle"
            export_bundle(ExportRequest(out=out, model=TINY, pretrained="none", **settings), clip=tiny_clip)
            made[key] = (out, _digest(out))
        return made[key][0]

    yield get
    changed = [str(out) for out, digest in made.values() if _digest(out) != digest]
    assert not changed, f"tests wrote into the shared bundles {changed}: copy a bundle before changing it"


def _digest(folder: Path) -> dict[str, bytes]:
    import hashlib

    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).digest() if p.is_file() else b""
            for p in sorted(folder.rglob("*"))}


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
def family_chain(tmp_path_factory, image_folder):
    """Builds one family's chain (train, onnx FP32 + FP16 verified, calibrate) once per session:
    ``family_chain(family)``. Tests that change a bundle work on a copy of it."""
    from families import build_chain

    chains = {}

    def get(family):
        key = (family.name, family.model)
        if key not in chains:
            chains[key] = build_chain(family, tmp_path_factory.mktemp(family.name), image_folder)
        return chains[key]

    return get


@pytest.fixture(scope="session")
def vit_b32_chain(family_chain):
    """The one full-size chain of the default run: ViT-B-32 through the real `openai` tag (QuickGELU,
    random weights behind a local hub), trained, exported in FP32 + FP16, calibrated to both INT8 graphs."""
    from families import VIT_B32_OPENAI

    return family_chain(VIT_B32_OPENAI)


@pytest.fixture(scope="session")
def vit_b32_bundle(vit_b32_chain):
    """The full-size chain's ExportResult; its bundle folder (calibrated since) is ``result.bundle``."""
    return vit_b32_chain.exported


@pytest.fixture(scope="session")
def vit_b32_int8(vit_b32_chain):
    """The full-size chain's CalibrateResult (the fused graph, Q/DQ over FP32 and over FP16)."""
    return vit_b32_chain.calibrated


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
