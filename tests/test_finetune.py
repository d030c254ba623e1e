"""Fine-tuning the image encoder with the head: accuracy, the checkpoint, export, and bad input."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from finetune_data import FT_ARGS, make_sets, one_torch_thread, pixels_of, torch_logits
from rada_export import RadaError
from rada_export.checkpoint import load_clip_for_checkpoint, load_head
from rada_export.cli.app import app
from rada_export.clip import load_clip
from rada_export.distributed import Shard
from rada_export.finetune import data, schedule, wise
from rada_export.finetune.state import state_path

runner = CliRunner()
TINY = ["--model", "rada-tiny-ViT", "--pretrained", "none", "--quiet"]
WARM = ["--epochs", "10", "--aug-copies", "2", "--val-fraction", "0.25"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A frozen-encoder head and a fine-tuned one, trained on the same data with the same warm phase."""
    root = tmp_path_factory.mktemp("finetune")
    data_dir, test_dir = make_sets(root)
    frozen, tuned = root / "frozen.safetensors", root / "tuned.safetensors"
    with one_torch_thread():
        result = runner.invoke(app, ["train", "--data", str(data_dir), "--out", str(frozen), *TINY, *WARM])
        assert result.exit_code == 0, result.output
        result = runner.invoke(app, ["train", "--data", str(data_dir), "--out", str(tuned), *TINY, *WARM, *FT_ARGS,
                                     "--ft-epochs", "10"])
        assert result.exit_code == 0, result.output
    return {"root": root, "data": data_dir, "test": test_dir, "frozen": frozen, "tuned": tuned, "output": result.output}


def test_finetune_beats_the_frozen_head_on_held_out_images(trained):
    clip = load_clip("rada-tiny-ViT", "none")
    pixels, labels = pixels_of(clip, trained["test"])
    frozen_acc = float((torch_logits(trained["frozen"], pixels).argmax(-1) == labels).float().mean())
    tuned_acc = float((torch_logits(trained["tuned"], pixels).argmax(-1) == labels).float().mean())
    # 48 test images of 6 classes (chance: 0.17), drawn with another seed than the training images;
    # measured 0.29 -> 0.65 on this machine.
    assert frozen_acc <= 0.35, frozen_acc
    assert tuned_acc >= 0.55 and tuned_acc >= frozen_acc + 0.25, (frozen_acc, tuned_acc)
    text = " ".join(trained["output"].split())
    assert "RAda, frozen encoders (warm phase)" in text and "RAda-FT (best epoch" in text


def test_finetuned_checkpoint_carries_the_encoder(trained):
    ckpt = load_head(trained["tuned"])
    assert ckpt.fine_tuned and ckpt.metadata.format_version == 2
    assert ckpt.metadata.encoder["towers"] == ["visual"] and ckpt.metadata.encoder["tensors"] == len(ckpt.encoder_state)
    history = ckpt.metadata.training["finetune"]["history"]
    assert [h["epoch"] for h in history] == list(range(11))  # epoch 0: the warm head on the pretrained encoder
    best = ckpt.metadata.training["finetune"]["best_epoch"]
    assert history[best]["val_accuracy"] == max(h["val_accuracy"] for h in history)
    assert not state_path(trained["tuned"]).exists()  # the resumable state is removed once the checkpoint is written
    fresh = load_clip("rada-tiny-ViT", "none").model.state_dict()
    moved = [k for k, v in ckpt.encoder_state.items() if not torch.equal(v, fresh[k])]
    assert all(k.startswith("visual.") for k in ckpt.encoder_state) and len(moved) > len(ckpt.encoder_state) // 2
    frozen = load_head(trained["frozen"])
    assert not frozen.fine_tuned and frozen.metadata.format_version == 1


def test_onnx_export_of_a_finetuned_checkpoint_predicts_as_the_torch_model(trained, tmp_path):
    from rada_export.runtimes import load_bundle

    bundle = tmp_path / "bundle"
    result = runner.invoke(app, ["onnx", "--ckpt", str(trained["tuned"]), "--out", str(bundle), "--quiet"])
    assert result.exit_code == 0, result.output  # the export verifies its graphs against the fine-tuned model
    clip = load_clip("rada-tiny-ViT", "none")
    pixels, labels = pixels_of(clip, trained["test"])
    want = torch_logits(trained["tuned"], pixels).numpy()
    got = load_bundle(bundle, backend="onnxruntime").predict(pixels.numpy())
    assert np.array_equal(got.labels, want.argmax(-1))
    assert np.abs(got.logits - want).max() < 1e-3
    pretrained_logits = torch_logits(trained["frozen"], pixels).numpy()
    assert not np.array_equal(got.labels, pretrained_logits.argmax(-1))  # not the pretrained encoder's predictions
    # A later `verify` needs the checkpoint, which holds the PyTorch encoder the graphs came from.
    result = runner.invoke(app, ["verify", "--bundle", str(bundle), "--quiet"])
    assert result.exit_code == 2 and "fine-tuned checkpoint" in result.output and "--ckpt" in result.output
    result = runner.invoke(app, ["verify", "--bundle", str(bundle), "--ckpt", str(trained["frozen"]), "--quiet"])
    assert result.exit_code == 2 and "not the one bundle" in " ".join(result.output.split()), result.output
    result = runner.invoke(app, ["verify", "--bundle", str(bundle), "--ckpt", str(trained["tuned"]), "--quiet"])
    assert result.exit_code == 0, result.output


def test_load_clip_for_checkpoint_refuses_another_pretrained(trained):
    ckpt = load_head(trained["tuned"])
    with pytest.raises(RadaError, match="fine-tuned the encoder from pretrained='none'"):
        load_clip_for_checkpoint(ckpt, "rada-tiny-ViT", "openai")


def _rewrite(src, dst, edit):
    """Re-writes a safetensors checkpoint with edited tensors or metadata (a tampered file)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        meta = json.loads(f.metadata()["rada_export"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    edit(tensors, meta)
    save_file(tensors, str(dst), metadata={"rada_export": json.dumps(meta)})


@pytest.mark.parametrize("case, message", [
    ("drop", "records"), ("shape", "has (64, 3, 16, 16)"), ("nan", "not finite"), ("unknown", "not in rada-tiny-ViT"),
])
def test_tampered_encoder_tensors_are_refused(trained, tmp_path, case, message):
    key = "encoder.visual.conv1.weight"

    def edit(tensors, meta):
        if case == "drop":
            del tensors[key]
        elif case == "shape":
            tensors[key] = torch.zeros(3, 16, 16, 64)
        elif case == "nan":
            tensors[key] = tensors[key].clone()
            tensors[key][0, 0, 0, 0] = float("nan")
        else:
            tensors["encoder.visual.extra"] = torch.zeros(2)
            meta["encoder"]["tensors"] += 1

    bad = tmp_path / "bad.safetensors"
    _rewrite(trained["tuned"], bad, edit)
    with pytest.raises(RadaError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_clip_for_checkpoint(load_head(bad), "rada-tiny-ViT", None)


def test_an_older_reader_would_refuse_a_finetuned_checkpoint(trained):
    with open(trained["tuned"], "rb") as fh:
        size = struct.unpack("<Q", fh.read(8))[0]
        header = json.loads(fh.read(size))
    assert json.loads(header["__metadata__"]["rada_export"])["format_version"] == 2  # version 1 readers stop at it


# -- the schedule, the batches, WiSE-FT --------------------------------------------------------------


def test_warmup_then_cosine():
    factors = [schedule.lr_factor(s, 100, 10) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0) and factors[10] == pytest.approx(1.0)
    assert factors[55] == pytest.approx(0.5, abs=0.02) and factors[99] < 0.001
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))


def test_layer_decay_scales_each_block(tiny_clip):
    named = list(tiny_clip.model.visual.named_parameters(prefix="visual"))
    for _, p in named:
        p.requires_grad_(True)
    try:
        groups = schedule.param_groups([named], [], encoder_lr=1.0, head_lr=0.0, weight_decay=0.1, layer_decay=0.5)
    finally:
        for _, p in named:
            p.requires_grad_(False)
    lr = {name: g["base_lr"] for g in groups for name in g["names"]}
    # Two blocks: the patch embedding is depth 0 (0.5^3), block i is depth i + 1, the projection on top (1.0).
    assert lr["visual.conv1.weight"] == 0.125 and lr["visual.transformer.resblocks.0.attn.in_proj_weight"] == 0.25
    assert lr["visual.transformer.resblocks.1.mlp.c_fc.weight"] == 0.5 and lr["visual.proj"] == 1.0
    decay = {name: g["weight_decay"] for g in groups for name in g["names"]}
    assert decay["visual.conv1.weight"] == 0.1 and decay["visual.ln_post.weight"] == 0.0


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_rank_slices_make_up_the_global_batch(world):
    for batch in data.global_batches(14, 6, seed=3, epoch=2):  # 6, 6, 2: the last shorter than some worlds
        slices = [data.rank_slice(batch, Shard(r, world)) for r in range(world)]
        assert [i for s, stand_in in slices if not stand_in for i in s] == batch
        assert all(s for s, _ in slices)  # every rank runs a step (stand-ins weigh zero)
    assert data.global_batches(14, 6, 3, 2) == data.global_batches(14, 6, 3, 2) != data.global_batches(14, 6, 3, 1)


def test_wise_interpolates_and_keeps_the_ends():
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(4, 4, generator=g), "n": torch.tensor([3])}
    tuned = {"w": torch.randn(4, 4, generator=g), "n": torch.tensor([3])}
    assert torch.equal(wise.interpolate(base, tuned, 0.0)["w"], base["w"])
    assert torch.equal(wise.interpolate(base, tuned, 1.0)["w"], tuned["w"])
    assert torch.allclose(wise.interpolate(base, tuned, 0.25)["w"], 0.75 * base["w"] + 0.25 * tuned["w"], atol=1e-6)
    with pytest.raises(RadaError, match="different tensors"):
        wise.interpolate(base, {"w": tuned["w"]}, 0.5)


# -- bad input ---------------------------------------------------------------------------------------


def _ft(args, tmp_path):
    out = tmp_path / "ft.safetensors"
    return runner.invoke(app, ["train", "--out", str(out), *TINY, "--epochs", "1", "--aug-copies", "1", *FT_ARGS,
                               "--ft-epochs", "1", *args]), out


def test_too_little_data_to_finetune_is_refused_before_any_work(image_folder, tmp_path):
    result, out = _ft(["--data", str(image_folder), "--shots", "3"], tmp_path)
    assert result.exit_code == 2 and "too few training images to fine-tune" in result.output and not out.exists()
    text = " ".join(result.output.split())
    assert "at least 4 training images" in text and "on frozen features (no fine-tuning)" in text


def test_bad_finetune_options_name_their_flags(image_folder, tmp_path):
    for args, flag in ((["--wise", "1.5"], "--wise"), (["--amp", "fp8"], "--amp"), (["--layer-decay", "0"], "--layer-decay"),
                       (["--encoder-lr", "nan"], "--encoder-lr")):
        result, out = _ft(["--data", str(image_folder), *args], tmp_path)
        assert result.exit_code == 2 and flag in result.output, (args, result.output)
    result = runner.invoke(app, ["train", "--data", str(image_folder), *TINY, "--resume", "--out", str(tmp_path / "x.safetensors")])
    assert result.exit_code == 2 and "fine-tuning only" in result.output


def test_resume_needs_a_state_and_a_stale_state_needs_a_decision(image_folder, tmp_path):
    result, out = _ft(["--data", str(image_folder), "--resume"], tmp_path)
    assert result.exit_code == 2 and "no resumable state" in result.output
    state_path(out).write_bytes(b"left over")
    result, _ = _ft(["--data", str(image_folder)], tmp_path)
    assert result.exit_code == 2 and "--resume" in result.output and "--force" in result.output
    result, _ = _ft(["--data", str(image_folder), "--resume"], tmp_path)
    assert result.exit_code == 2 and "not a readable resume state" in result.output


# -- GPU-minded options, run on the CPU here --------------------------------------------------------


def _quick(image_folder, out, *extra):
    with one_torch_thread():
        result = runner.invoke(app, ["train", "--data", str(image_folder), "--out", str(out), *TINY, "--epochs", "2",
                                     "--aug-copies", "1", *FT_ARGS, "--ft-epochs", "2", "--device", "cpu", *extra])
    assert result.exit_code == 0, result.output
    return load_head(out)


def test_activation_checkpointing_changes_memory_not_results(image_folder, tmp_path):
    plain = _quick(image_folder, tmp_path / "plain.safetensors")
    ckpt = _quick(image_folder, tmp_path / "ckpt.safetensors", "--grad-checkpointing")
    assert plain.metadata.training["finetune"]["best_epoch"] > 0  # the comparison covers trained weights
    for key, value in plain.encoder_state.items():  # recomputed activations are the same activations
        assert torch.equal(value, ckpt.encoder_state[key]), key


def test_bf16_autocast_and_a_trainable_text_tower(image_folder, tmp_path):
    amp = _quick(image_folder, tmp_path / "amp.safetensors", "--amp", "bf16", "--unfreeze-text")
    assert amp.metadata.encoder["towers"] == ["visual", "text"]
    assert "token_embedding.weight" in amp.encoder_state and "logit_scale" not in amp.encoder_state
    history = amp.metadata.training["finetune"]["history"]
    assert all(h["train_loss"] is None or np.isfinite(h["train_loss"]) for h in history)
    # The class features stored are the tuned text tower's: a rebuild with its weights gives them again.
    from rada_export.prompts import text_features

    clip = load_clip_for_checkpoint(amp, "rada-tiny-ViT", None)
    assert torch.allclose(text_features(clip, amp.metadata.class_names, amp.metadata.templates), amp.text_features, atol=1e-6)
    fresh = load_clip("rada-tiny-ViT", "none")
    assert not torch.allclose(text_features(fresh, amp.metadata.class_names, amp.metadata.templates), amp.text_features)
