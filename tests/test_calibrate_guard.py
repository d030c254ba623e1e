"""`calibrate` refuses a held-out sample too small to judge INT8, shows n beside each verdict, and
replaces INT8 graphs only with --force: through the real CLI on a copy of a shared tiny bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rada_export.calibration.bundle import MIN_HELD_OUT
from rada_export.runtimes import manifest as mf
from rada_export.synthetic import CLASSES
from cli_run import invoke, flat


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """One class folder of 8 images (the too-small sample) and a folder of 6 classes x 20 images."""
    from rada_export.synthetic import make_image_folder

    root = tmp_path_factory.mktemp("guard-images")
    make_image_folder(root / "many", images_per_class=20, size=64, seed=5)
    one = root / "one-class"
    shutil.copytree(sorted((root / "many").iterdir())[0], one)
    for extra in sorted(one.iterdir())[8:]:
        extra.unlink()
    return root / "many", one


@pytest.fixture()
def bundle(shared_tiny_bundle, tmp_path):
    src = shared_tiny_bundle(classes=[c[0] for c in CLASSES])
    return Path(shutil.copytree(src, tmp_path / "bundle"))


def args(bundle: Path, images: Path, tmp_path: Path, *more) -> list:
    return ["calibrate", "--bundle", bundle, "--images", images, "--graph", "model", "--calib-samples", "16",
            "--cache-dir", tmp_path / "cache", *more]


def int8_graphs(bundle: Path) -> list[str]:
    return sorted(k for k in mf.read_manifest(bundle).graphs if ".int8" in k)


def test_a_one_class_folder_of_eight_images_is_refused_before_quantizing(bundle, folders, tmp_path):
    _, one = folders
    result = invoke(*args(bundle, one, tmp_path))
    text = flat(result.output)
    assert result.exit_code == 2, text
    assert "cannot vouch for INT8" in text and f"fewer than the {MIN_HELD_OUT}" in text and "--accept-degraded" in text
    assert int8_graphs(bundle) == []

    result = invoke(*args(bundle, one, tmp_path, "--accept-degraded", "-q"))
    text = flat(result.output)
    assert result.exit_code == 0, text
    assert "(n=1)" in text  # 8 images: a fifth (1) held out, and n stands beside the verdict
    assert "written on a sample too small to judge INT8" in text
    assert int8_graphs(bundle) == ["model.int8", "model.int8_fp16"]


def test_a_varied_folder_passes_and_replacing_needs_force(bundle, folders, tmp_path):
    many, _ = folders
    result = invoke(*args(bundle, many, tmp_path, "--holdout", "24", "--json"))
    assert result.exit_code in (0, 1), result.output  # random weights: the thresholds may or may not hold
    report = json.loads(result.stdout)
    if result.exit_code == 0:
        sample = report["sample"]
        assert sample["held_out"] == 24 and sample["classes"] >= 2 and sample["problems"] == []
        assert report["graphs"]["model.int8"]["held_out_images"] == 24
    else:
        pytest.skip("the tiny random-weights model fell below the INT8 thresholds on this sample")

    first = mf.read_manifest(bundle).calibration["model.int8"]
    result = invoke(*args(bundle, many, tmp_path, "--holdout", "24", "--seed", "1"))
    text = flat(result.output)
    assert result.exit_code == 2 and "already has INT8 graphs model.int8" in text and "--force" in text, text
    assert mf.read_manifest(bundle).calibration["model.int8"] == first  # nothing replaced

    result = invoke(*args(bundle, many, tmp_path, "--holdout", "24", "--seed", "1", "--force", "--accept-degraded", "-q"))
    assert result.exit_code == 0, flat(result.output)
    assert "(n=24)" in flat(result.output)
    assert mf.read_manifest(bundle).calibration["model.int8"]["seed"] == 1
