"""`predict` on folders, through the real CLI: JSON lines as results come, unreadable files skipped,
counted and named, progress on stderr, the exit code, and the TTA counters in both outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_run import invoke, flat

CLASSES = ["cat", "dog", "bird"]


def lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def bundle(shared_tiny_bundle):
    return shared_tiny_bundle(classes=CLASSES, verify=False)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Two classes of 3 images in sub-folders, and one file that is not an image at all."""
    from rada_export.synthetic import make_image_folder

    root = tmp_path_factory.mktemp("photos")
    make_image_folder(root, images_per_class=3, num_classes=2, size=48, seed=2)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really" * 10)
    return root


def test_json_lines_one_per_image_and_the_unreadable_file_named(bundle, folder):
    result = invoke("predict", "--bundle", bundle, folder, "--json", "--top", "2")
    assert result.exit_code == 0, result.output
    records = lines(result.stdout)
    images = [r for r in records if "label" in r]
    errors = [r for r in records if "error" in r]
    assert len(images) == 6 and all(len(r["top"]) == 2 and r["class"] in CLASSES for r in images)
    assert [Path(r["image"]).name for r in errors] == ["broken.png"] and "cannot be read" in errors[0]["error"]
    summary = records[-1]["summary"]
    assert summary["predicted"] == 6 and [Path(p).name for p in summary["unreadable"]] == ["broken.png"]
    assert summary["tta"] == "off" and summary["tta_stats"] is None
    assert "classifying 7 image(s)" in result.stderr  # the progress bar, on stderr only
    assert "classifying" not in result.stdout


def test_table_names_the_skipped_file_and_quiet_drops_the_progress(bundle, folder):
    result = invoke("predict", "--bundle", bundle, "--images", folder, "-q")
    assert result.exit_code == 0, result.output
    assert "skipped 1 unreadable file(s)" in flat(result.stderr) and "broken.png" in result.stderr
    assert "classifying" not in result.stderr
    assert result.stdout.count(".png") == 6  # the table's rows


def test_nothing_readable_exits_2(bundle, tmp_path):
    for name in ("a.png", "b.jpg"):
        (tmp_path / name).write_bytes(b"garbage")
    result = invoke("predict", "--bundle", bundle, tmp_path, "--json", "-q")
    assert result.exit_code == 2, result.output
    records = lines(result.stdout)
    assert len([r for r in records if "image" in r and "error" in r]) == 2
    assert "none of the 2 image file(s) could be read" in records[-1]["error"]


@pytest.mark.parametrize("mode", ["continual", "episodic"])
def test_tta_counters_in_the_table_and_the_json(bundle, folder, mode):
    result = invoke("predict", "--bundle", bundle, folder, "--tta", mode, "--json", "-q")
    assert result.exit_code == 0, result.output
    stats = lines(result.stdout)[-1]["summary"]["tta_stats"]
    assert stats is not None, "the runtime reports no stats (Runtime.stats)"
    assert stats["mode"] == mode and stats["frames"] == 6
    for key in ("updates", "skipped_unconfident", "skipped_nonfinite", "resets"):
        assert isinstance(stats[key], int) and stats[key] >= 0, key
    if mode == "continual":
        assert stats["updates"] + stats["skipped_unconfident"] + stats["skipped_nonfinite"] == 6
    result = invoke("predict", "--bundle", bundle, folder, "--tta", mode, "-q")
    assert result.exit_code == 0, result.output
    text = flat(result.stdout)
    assert f"TTA {mode}: 6 frame(s)" in text and "head update(s)" in text and "reset(s)" in text
