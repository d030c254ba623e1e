"""Sharded feature extraction under torchrun gives the same head as one process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from rada_export.checkpoint import load_head


def _train(out, data, nproc: int | None):
    args = ["train", "--data", str(data), "--model", "rada-tiny-ViT", "--pretrained", "none", "--out", str(out),
            "--epochs", "3", "--aug-copies", "3", "--seed", "5", "--quiet"]
    if nproc is None:
        cmd = [shutil.which("rada-export"), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port", "29531",
               "--no-python", shutil.which("rada-export"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.slow  # torchrun with two gloo ranks stays in the default run through fine-tuning (test_finetune_distributed.py)
def test_two_gloo_processes_give_the_same_head_as_one(image_folder, tmp_path):
    single = _train(tmp_path / "one.safetensors", image_folder, None)
    double = _train(tmp_path / "two.safetensors", image_folder, 2)
    assert "RAda (trained)" in single.stdout and double.stdout.count("RAda (trained)") == 1  # rank 0 reports
    a, b = load_head(tmp_path / "one.safetensors"), load_head(tmp_path / "two.safetensors")
    for (name, pa), (_, pb) in zip(a.head.state_dict().items(), b.head.state_dict().items()):
        assert (pa - pb).abs().max() <= 1e-5, name
    assert torch.equal(a.text_features, b.text_features)
    assert a.metadata.training["num_train_images"] == b.metadata.training["num_train_images"]
