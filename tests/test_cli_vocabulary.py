"""One vocabulary across commands, through the real CLI: images are `--images` everywhere (the older
spellings still work), `train --json`, `predict --quiet`, help on every `-q`, switches shown without a
value type, one default model, and the smaller output fixes (zero-shot `onnx`, `onnx --quiet`,
`verify --json` thresholds, the quick demo's marker)."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest

from rada_export.cli.app import app
from rada_export.defaults import DEFAULT_MODEL, DEFAULT_PRETRAINED
from cli_run import flat, invoke as run_cli

OWN = ("demo", "train", "onnx", "verify", "predict", "calibrate")
TINY = ["--model", "rada-tiny-ViT", "--pretrained", "none"]
CLASSES = ["cat", "dog", "bird"]


def invoke(*args):
    return run_cli(*args, env={"COLUMNS": "200"})  # wide enough that help text does not wrap


@pytest.fixture(scope="module")
def bundle(shared_tiny_bundle):
    return shared_tiny_bundle(classes=CLASSES, verify=False)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    from rada_export.synthetic import make_image_folder

    root = tmp_path_factory.mktemp("vocab-photos")
    make_image_folder(root, images_per_class=2, num_classes=3, size=48, seed=4)
    return root


def command(name: str):
    from typer.main import get_command

    return get_command(app).commands[name]


@pytest.mark.parametrize("name", OWN)
def test_every_quiet_has_help_and_images_are_given_as_images(name):
    params = {opt: p for p in command(name).params for opt in p.opts}
    if "-q" in params:
        assert params["-q"].help, f"{name} -q has no help"
    if name not in ("train", "demo"):  # train takes a labelled folder (--data); demo makes its own images
        assert "--images" in params, f"{name} has no --images"


def test_no_switch_shows_a_value_type_in_help():
    """`--force <bool>` reads as if the switch took a value: switches show none."""
    for name in OWN:
        result = invoke(name, "--help")
        assert result.exit_code == 0, result.output
        assert "<bool>" not in result.output, f"{name} --help shows <bool>"


def test_one_default_model_across_commands():
    from rada_export.cli import train
    from rada_export.demo import DemoConfig

    assert inspect.signature(train.train).parameters["model"].default.default == DEFAULT_MODEL
    assert DemoConfig().model == DEFAULT_MODEL and DEFAULT_PRETRAINED == "openai"
    for name in ("train", "onnx", "demo"):
        text = flat(invoke(name, "--help").output)
        assert DEFAULT_MODEL in text and DEFAULT_PRETRAINED in text, name


def test_the_quick_demos_marker_records_the_model_it_ran(tmp_path):
    from rada_export import demo

    config = demo.DemoConfig(out=tmp_path, quick=True)
    demo._write_marker(tmp_path, config, [])
    record = json.loads((tmp_path / demo.MARKER).read_text())
    assert record["model"] == "rada-tiny-ViT" != DEFAULT_MODEL
    demo._write_marker(tmp_path, demo.DemoConfig(out=tmp_path), [])
    assert json.loads((tmp_path / demo.MARKER).read_text())["model"] == DEFAULT_MODEL


def test_predict_takes_images_positionally_or_as_images_and_is_quiet(bundle, photos):
    first = sorted(photos.rglob("*.png"))[0]
    result = invoke("predict", "--bundle", bundle, first, "--images", photos, "--json", "--quiet")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len([r for r in records if "label" in r]) == 7 and records[-1]["summary"]["predicted"] == 7
    assert result.stderr == ""  # --quiet: no progress bar


def test_verify_accepts_a_folder_and_gives_thresholds_as_numbers(bundle, photos):
    result = invoke("verify", "--bundle", bundle, photos, "--json", "-q")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] is True and report["results"]
    for record in report["results"]:
        assert record["samples"] >= 6  # the folder's 6 images beside the seeded inputs
        assert record["thresholds"] and all(isinstance(v, float) for v in record["thresholds"].values())
        assert ">=" in record["thresholds_text"]
    result = invoke("verify", "--bundle", bundle, "--images", photos / "missing")
    assert result.exit_code == 2 and "is not an existing file" in flat(result.output)


def test_zero_shot_onnx_needs_classes_and_says_why(tmp_path):
    result = invoke("onnx", *TINY, "--out", tmp_path / "b")
    text = flat(result.output)
    assert result.exit_code == 2, text
    assert "zero-shot export (no --ckpt)" in text and "--classes" in text and "checkpoint has none" not in text
    assert not (tmp_path / "b").exists()


def test_onnx_quiet_prints_one_line_and_the_old_image_spelling_works(tmp_path, photos):
    image = sorted(photos.rglob("*.png"))[0]
    result = invoke("onnx", *TINY, "--classes", ",".join(CLASSES), "--out", tmp_path / "b", "--verify-image", image,
                    "--images", photos, "--quiet")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and re.match(r"wrote .*b \(\d+ graphs, parity passed\)", lines[0]), result.stdout
    assert "bundle bundle" not in result.output


def test_train_json(tmp_path, photos):
    out = tmp_path / "head.safetensors"
    result = invoke("train", "--data", photos, *TINY, "--out", out, "--epochs", "1", "--aug-copies", "1", "--json", "-q")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["checkpoint"] == str(out) and out.is_file() and summary["finished"] is True
    assert summary["model"] == "rada-tiny-ViT" and len(summary["classes"]) == 3
    assert 0.0 <= summary["trained_accuracy"] <= 1.0 and summary["train_images"] + summary["validation_images"] == 6


def test_calibrate_help_names_conv_layers_too():
    text = flat(invoke("calibrate", "--help").output)
    assert "Conv layers" in text and "--force" in text and "20 held-out images" in text
