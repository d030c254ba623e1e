"""Offline builds stop at once, before open_clip's download retries, naming the file and the offline ways."""

from __future__ import annotations

import socket
import time

import pytest

from rada_export import hub_access
from rada_export.errors import RadaError

from _hfcache import add_repo, add_t5_style_tokenizer, use_cache


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: connections are refused


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    use_cache(monkeypatch, cache)
    monkeypatch.delenv("HF_HUB_OFFLINE")  # only the unreachable endpoint below says "no network"
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setattr(hub_access, "_reachable", {})
    return cache


def test_tagged_weights_missing_and_hub_silent_fail_fast(empty_cache):
    start = time.perf_counter()
    with pytest.raises(RadaError) as err:
        hub_access.check_fetchable("ViT-B-16", "openai", "use --pretrained none")
    assert time.perf_counter() - start < 5
    assert "weights of ViT-B-16/openai" in err.value.problem and "does not answer" in err.value.problem
    assert err.value.fix == "use --pretrained none" and err.value.field == "pretrained"


def test_hf_hub_offline_is_honoured_without_a_connection_attempt(empty_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    attempts = []
    remote = hub_access.weights_file("ViT-B-32", "laion2b_s34b_b79k")
    problem = hub_access.unavailable(remote, answers=lambda url: attempts.append(url) or True)
    assert "HF_HUB_OFFLINE is set" in problem and attempts == []


def test_cached_weights_need_no_network(empty_cache):
    remote = hub_access.weights_file("ViT-B-16", "openai")
    add_repo(empty_cache, remote.repo_id, {"open_clip_model.safetensors": b"weights"})
    assert hub_access.unavailable(remote) is None
    hub_access.check_fetchable("ViT-B-16", "openai", "unused")


def test_siglip_tokenizer_missing_names_the_repository_and_local_dir(empty_cache):
    with pytest.raises(RadaError) as err:
        hub_access.check_fetchable("ViT-B-16-SigLIP", None, "unused")
    assert "tokenizer of ViT-B-16-SigLIP (timm/ViT-B-16-SigLIP)" in err.value.problem
    assert "local-dir:" in err.value.fix and "tokenizer.json" in err.value.fix and err.value.field == "model"


def test_siglip_tokenizer_in_the_cache_passes(empty_cache):
    add_t5_style_tokenizer(empty_cache, "timm/ViT-B-16-SigLIP")
    hub_access.check_fetchable("ViT-B-16-SigLIP", None, "unused")


def test_models_without_downloads_ask_nothing(empty_cache):
    assert hub_access.tokenizer_file("ViT-B-32") is None
    assert hub_access.weights_file("ViT-B-32", "not-a-tag") is None


def test_train_with_its_default_model_fails_in_seconds_offline(empty_cache, tmp_path):
    from typer.testing import CliRunner

    from rada_export.cli.app import app
    from rada_export.synthetic import make_image_folder

    make_image_folder(tmp_path / "data", images_per_class=2, num_classes=2, size=32)
    start = time.perf_counter()
    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "h.safetensors")])
    assert result.exit_code == 2, result.output
    assert time.perf_counter() - start < 20
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[0].startswith("error: --pretrained: no copy of the weights of") and "does not answer" in lines[0]
    assert "--pretrained none" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "h.safetensors").exists()


def test_siglip_export_offline_names_the_missing_tokenizer(empty_cache, tmp_path):
    from typer.testing import CliRunner

    from rada_export.cli.app import app

    result = CliRunner().invoke(app, ["onnx", "--model", "ViT-B-16-SigLIP", "--pretrained", "none", "--classes", "a,b",
                                      "--out", str(tmp_path / "b")])
    assert result.exit_code == 2, result.output
    assert "tokenizer of ViT-B-16-SigLIP (timm/ViT-B-16-SigLIP)" in result.output and "local-dir:" in result.output
    assert not (tmp_path / "b").exists()
