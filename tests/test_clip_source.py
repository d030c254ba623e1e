"""How a CLIP model is resolved from its name, weights and pretrained settings.

The tiny configuration stands in for the architecture; the `hf-hub:` cache and the `local-dir:`
folder are laid out as huggingface_hub and open_clip write them, and open_clip reads them for real.
Full-size tags (QuickGELU for OpenAI's weights, MobileCLIP's preprocessing) are in test_families.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _hfcache import add_repo, open_clip_config, save_random_weights, use_cache
from rada_export.clip import load_clip
from rada_export.errors import RadaError

TINY = "rada-tiny-ViT"
MOBILECLIP_PREPROCESS = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "interpolation": "bilinear", "resize_mode": "shortest"}


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A tiny model with its own (seeded, non-default) weights, and a local-dir folder holding them."""
    import open_clip

    from rada_export.clip import register_own_configs

    register_own_configs()
    torch.manual_seed(123)
    model = open_clip.create_model(TINY)
    root = tmp_path_factory.mktemp("tiny-local-dir")
    save_random_weights(model, root / "open_clip_model.safetensors", half=False)
    (root / "open_clip_config.json").write_text(open_clip_config(TINY, MOBILECLIP_PREPROCESS))
    return model.state_dict(), root


def _same_weights(state, model) -> bool:
    return all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_local_dir_takes_config_and_weights(tiny_weights):
    state, root = tiny_weights
    clip = load_clip(f"local-dir:{root}", None)
    pre = clip.preprocess_config
    assert (list(pre.mean), list(pre.std), pre.interpolation) == ([0.0] * 3, [1.0] * 3, "bilinear")
    assert _same_weights(state, clip.model)
    assert clip.resolved()["settings_from"].startswith("open_clip_config.json")
    assert not clip.random_weights


def test_hf_hub_reads_a_local_cache(tiny_weights, tmp_path, monkeypatch):
    state, root = tiny_weights
    add_repo(tmp_path, "someone/tiny-clip", {"open_clip_config.json": (root / "open_clip_config.json").read_text(),
                                             "open_clip_model.safetensors": root / "open_clip_model.safetensors"})
    use_cache(monkeypatch, tmp_path)
    clip = load_clip("hf-hub:someone/tiny-clip", None)
    assert clip.preprocess_config.interpolation == "bilinear" and list(clip.preprocess_config.mean) == [0.0] * 3
    assert _same_weights(state, clip.model)


def test_schema_names_refuse_a_tag_and_missing_sources(tiny_weights, tmp_path):
    _, root = tiny_weights
    with pytest.raises(RadaError, match="carries its own weights"):
        load_clip(f"local-dir:{root}", "openai")
    with pytest.raises(RadaError, match="has no open_clip_config.json"):
        load_clip(f"local-dir:{tmp_path}", None)
    with pytest.raises(RadaError, match="does not exist"):
        load_clip(f"local-dir:{tmp_path / 'nope'}", None)


def test_schema_name_with_none_builds_random_weights_with_the_config(tiny_weights):
    state, root = tiny_weights
    clip = load_clip(f"local-dir:{root}", "none")
    assert clip.random_weights and clip.preprocess_config.interpolation == "bilinear"
    assert not _same_weights(state, clip.model)


def test_bare_file_warns_naming_the_settings_taken(tiny_weights):
    state, root = tiny_weights
    clip = load_clip(TINY, str(root / "open_clip_model.safetensors"))
    assert _same_weights(state, clip.model)
    (warning,) = clip.source.warnings
    assert "defaults apply" in warning and "mean=(0.4815" in warning and "bicubic" in warning
    assert f"local-dir:{root}" in warning  # the folder beside it holds open_clip_config.json


def test_pretrained_cfg_must_be_a_known_tag(tiny_weights):
    _, root = tiny_weights
    with pytest.raises(RadaError, match="unknown pretrained tag"):
        load_clip(TINY, str(root / "open_clip_model.safetensors"), pretrained_cfg="openai")


def test_export_records_and_rebuilds_a_local_dir_model(tiny_weights, tmp_path):
    """hf-hub:/local-dir: names pass through export and verify with their preprocessing."""
    from rada_export.export.bundle import ExportRequest, export_bundle

    _, root = tiny_weights
    result = export_bundle(ExportRequest(out=tmp_path / "b", model=f"local-dir:{root}", classes=["cat", "dog"]))
    manifest = json.loads((result.bundle / "manifest.json").read_text())
    assert manifest["model"] == f"local-dir:{root}"
    assert manifest["preprocess"]["interpolation"] == "bilinear" and manifest["preprocess"]["mean"] == [0.0] * 3
    assert manifest["resolved"]["activations"] == ["GELU"] and manifest["probability"] == "softmax"
    assert result.report.passed

    from rada_export.export.verify import verify_bundle

    assert verify_bundle(result.bundle).passed


def test_rebuild_check_refuses_a_different_build(tiny_clip):
    from rada_export.clip import check_rebuild

    recorded = {**tiny_clip.resolved(), "quick_gelu": True, "activations": ["QuickGELU"]}
    with pytest.raises(RadaError, match="quick_gelu: recorded True, rebuilt False"):
        check_rebuild(tiny_clip, recorded, "checkpoint x")
    check_rebuild(tiny_clip, tiny_clip.resolved(), "checkpoint x")
    assert np.isfinite(tiny_clip.logit_scale)
