"""Head training: on real CLIP features, and `rada-export train` end to end."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from _hfcache import use_cache
from rada_export.checkpoint import load_head
from rada_export.cli.app import app
from rada_export.head import RAdaHead
from rada_export.train import accuracy, fit_head

runner = CliRunner()


def test_fit_head_defaults_beat_zero_shot_on_real_dtd_features(dtd):
    zero_shot = accuracy(RAdaHead(512), dtd["val_x"], dtd["val_y"], dtd["protos"])
    assert abs(zero_shot - 0.707) < 0.005  # docs/workflow.md's prototype baseline: the data is what we think
    head = fit_head(dtd["train_x"], dtd["train_y"], dtd["protos"], seed=0)
    trained = accuracy(head, dtd["val_x"], dtd["val_y"], dtd["protos"])
    assert trained >= 0.74, f"val top-1 {trained:.4f} < 0.74 (zero-shot {zero_shot:.4f})"


def test_fit_head_is_seeded_and_accepts_tensors():
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(40, 32, generator=g), torch.randn(4, 32, generator=g)
    y = torch.arange(40) % 4
    a = fit_head(x, y, t, epochs=2, seed=3)
    b = fit_head(x.numpy(), y.numpy(), t.numpy(), epochs=2, seed=3)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name
    assert a.out_proj.weight.abs().sum() > 0  # training moved the head away from zero-shot


def test_fit_head_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="N x D and K x D"):
        fit_head(np.zeros((4, 8)), np.zeros(4), np.zeros((2, 16)))
    with pytest.raises(ValueError, match="labels must lie"):
        fit_head(np.ones((4, 8)), np.array([0, 1, 2, 5]), np.ones((3, 8)), epochs=1)


def test_train_job_changes_only_the_head(image_folder, tmp_path, tiny_clip):
    from rada_export.train_job import TrainJob, run_train_job

    before = {k: v.clone() for k, v in tiny_clip.model.state_dict().items()}
    result = run_train_job(TrainJob(data=image_folder, out=tmp_path / "h.safetensors", model="rada-tiny-ViT",
                                    pretrained="none", aug_copies=2, config=__import__("rada_export.train", fromlist=["TrainConfig"]).TrainConfig(epochs=2)))
    after = load_head(result.checkpoint)
    assert any(after.head.out_proj.weight.flatten() != 0)
    # The encoders are frozen: a fresh load builds the same weights, and training touched none of them.
    from rada_export.clip import load_clip

    fresh = load_clip("rada-tiny-ViT", "none")
    for k, v in fresh.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert result.encoder_passes == 2 * result.num_train_images + result.num_val_images


def test_epochs_cost_no_encoder_passes(image_folder, tmp_path):
    from rada_export.train import TrainConfig
    from rada_export.train_job import TrainJob, run_train_job

    passes = []
    for epochs in (1, 6):
        job = TrainJob(data=image_folder, out=tmp_path / f"h{epochs}.safetensors", model="rada-tiny-ViT",
                       pretrained="none", aug_copies=2, config=TrainConfig(epochs=epochs))
        passes.append(run_train_job(job).encoder_passes)
    assert passes[0] == passes[1]


def test_cli_train_end_to_end(image_folder, tmp_path):
    out = tmp_path / "head.safetensors"
    result = runner.invoke(app, ["train", "--data", str(image_folder), "--model", "rada-tiny-ViT", "--pretrained", "none",
                                 "--out", str(out), "--epochs", "3", "--shots", "4", "--aug-copies", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "zero-shot CLIP" in result.output and "RAda (trained)" in result.output
    ckpt = load_head(out)
    assert ckpt.metadata.model == "rada-tiny-ViT" and len(ckpt.metadata.class_names) == 6
    assert ckpt.metadata.training["shots"] == 4 and ckpt.metadata.training["aug_copies"] == 2


@pytest.mark.slow
def test_cli_train_full_size_architecture(image_folder, tmp_path):
    out = tmp_path / "head.safetensors"
    result = runner.invoke(app, ["train", "--data", str(image_folder), "--model", "ViT-B-32", "--pretrained", "none",
                                 "--out", str(out), "--epochs", "2", "--shots", "3", "--aug-copies", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert load_head(out).head.embed_dim == 512


def _train(args, tmp_path):
    out = tmp_path / "out.safetensors"
    result = runner.invoke(app, ["train", "--model", "rada-tiny-ViT", "--pretrained", "none", "--out", str(out),
                                 "--epochs", "1", "--quiet", *args])
    return result, out


def test_bad_input_missing_or_empty_data(tmp_path):
    result, out = _train(["--data", str(tmp_path / "missing")], tmp_path)
    assert result.exit_code == 2 and "does not exist" in result.output and not out.exists()
    (tmp_path / "empty").mkdir()
    result, out = _train(["--data", str(tmp_path / "empty")], tmp_path)
    assert result.exit_code == 2 and "no class sub-folders" in result.output and not out.exists()


def test_bad_input_class_without_images(image_folder, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(image_folder, data)
    (data / "zebra").mkdir()
    (data / "zebra" / "notes.txt").write_text("no images here")
    result, out = _train(["--data", str(data)], tmp_path)
    assert result.exit_code == 2 and "zebra" in result.output and "holds no images" in result.output
    assert not out.exists()


def test_unreadable_images_are_skipped_and_counted(image_folder, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(image_folder, data)
    for i in range(2):
        (data / "red_circle" / f"broken{i}.png").write_bytes(b"not a png")
    result, out = _train(["--data", str(data), "--val-fraction", "0.01"], tmp_path)
    assert result.exit_code == 0, result.output
    assert "2 unreadable" in result.output.replace("\n", " ")


def test_only_unreadable_images_is_an_error(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "data" / name / f"{i}.jpg").write_bytes(b"garbage")
    result, out = _train(["--data", str(tmp_path / "data")], tmp_path)
    assert result.exit_code == 2 and "could be read" in result.output and not out.exists()


def test_bad_input_too_many_shots(image_folder, tmp_path):
    result, out = _train(["--data", str(image_folder), "--shots", "50"], tmp_path)
    assert result.exit_code == 2 and "--shots 50" in result.output and not out.exists()


def test_bad_input_unknown_model_and_tag(image_folder, tmp_path):
    result = runner.invoke(app, ["train", "--data", str(image_folder), "--model", "ViT-Q-99", "--pretrained", "none",
                                 "--out", str(tmp_path / "o.safetensors")])
    assert result.exit_code == 2 and "unknown open_clip model" in result.output
    result = runner.invoke(app, ["train", "--data", str(image_folder), "--model", "ViT-B-32", "--pretrained", "bogus_tag",
                                 "--out", str(tmp_path / "o.safetensors")])
    assert result.exit_code == 2 and "unknown pretrained tag" in result.output and "openai" in result.output


def test_weights_not_reachable_offline_names_the_offline_options(image_folder, tmp_path, monkeypatch):
    # HF_HUB_OFFLINE is how a user tells huggingface_hub there is no network; it fails at once. huggingface_hub
    # reads it when imported, so the test sets its constant too, with an empty cache: nothing found, no network tried.
    use_cache(monkeypatch, tmp_path / "hub")
    result = runner.invoke(app, ["train", "--data", str(image_folder), "--model", "ViT-B-32", "--pretrained", "openai",
                                 "--out", str(tmp_path / "o.safetensors")])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "--pretrained none" in text and "weights file" in text
    assert not (tmp_path / "o.safetensors").exists()
