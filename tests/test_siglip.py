"""SigLIP through the chain: its requirements, logit_bias, sigmoid probabilities,
and its Hugging Face tokenizer on the torch-free runtime.

The tiny SigLIP configuration (rada-tiny-SigLIP) has SigLIP's text tower settings and tokenizer name;
the tokenizer itself is a small tokenizer.json built with the `tokenizers` library (T5-style: Unigram,
Metaspace, "</s>" appended; tests/_hfcache.py), saved through transformers into a local Hugging Face
cache at the repository open_clip fetches it from, so open_clip's own HFTokenizer loads it offline.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from _hfcache import add_t5_style_tokenizer, use_cache
from rada_export.errors import RadaError

TINY_SIGLIP = "rada-tiny-SigLIP"
SIGLIP_TOKENIZER_REPO = "timm/ViT-B-16-SigLIP"
TEXTS = ["a photo of a cat.", "Dog", "red_square", "  blue   circle!!", "unknown wordzz", "",
         "a very long caption " * 12, "Crème brûlée & café"]


@pytest.fixture(scope="module")
def siglip_hub(tmp_path_factory):
    cache = tmp_path_factory.mktemp("hub")
    add_t5_style_tokenizer(cache, SIGLIP_TOKENIZER_REPO)
    return cache


@pytest.fixture
def offline_hub(siglip_hub, monkeypatch):
    use_cache(monkeypatch, siglip_hub)
    return siglip_hub


@pytest.fixture(scope="module")
def siglip_bundle(siglip_hub, tmp_path_factory):
    from rada_export.export.bundle import ExportRequest, export_bundle

    with pytest.MonkeyPatch.context() as mp:
        use_cache(mp, siglip_hub)
        out = tmp_path_factory.mktemp("siglip") / "bundle"
        return export_bundle(ExportRequest(out=out, model=TINY_SIGLIP, pretrained="none", classes=["cat", "dog", "bird"]))


def test_missing_transformers_is_reported_before_any_work(monkeypatch):
    from rada_export.clip import load_clip

    monkeypatch.setitem(sys.modules, "transformers", None)  # what an install without it gives: ImportError
    with pytest.raises(RadaError, match="needs the transformers package") as err:
        load_clip(TINY_SIGLIP, "none")
    assert "rada-export[export]" in err.value.fix


def test_manifest_records_logit_bias_sigmoid_and_the_tokenizer(siglip_bundle):
    manifest = json.loads((siglip_bundle.bundle / "manifest.json").read_text())
    assert manifest["logit_bias"] == pytest.approx(-10.0) and manifest["probability"] == "sigmoid"
    assert manifest["tokenizer"]["kind"] == "hf_tokenizers" and manifest["tokenizer"]["clean"] == "canonicalize"
    assert (siglip_bundle.bundle / manifest["tokenizer"]["file"]).is_file()
    assert siglip_bundle.report.passed


def test_runtime_tokenizer_gives_open_clips_ids(siglip_bundle, offline_hub):
    import open_clip

    from rada_export.clip import register_own_configs
    from rada_export.runtimes.tokenizer import load_tokenizer

    register_own_configs()
    host = open_clip.get_tokenizer(TINY_SIGLIP)
    manifest = json.loads((siglip_bundle.bundle / "manifest.json").read_text())
    device = load_tokenizer(siglip_bundle.bundle, manifest["tokenizer"])
    np.testing.assert_array_equal(device(TEXTS), host(TEXTS).numpy())


def test_runtime_set_classes_and_sigmoid_probabilities(siglip_bundle):
    from rada_export.runtimes.runtime import load_bundle

    runtime = load_bundle(siglip_bundle.bundle, backend="onnxruntime")
    m = runtime.manifest
    host = np.load(siglip_bundle.bundle / "text_features.npy")
    assert np.min(np.sum(host * runtime.text_features(m.class_names, m.templates), axis=1)) > 0.9999
    runtime.set_classes(["red square", "blue circle"])
    frame = np.random.default_rng(0).integers(0, 256, size=(80, 100, 3), dtype=np.uint8)
    pred = runtime.predict(frame)
    np.testing.assert_allclose(pred.probabilities, 1 / (1 + np.exp(-(pred.logits - 10.0))), rtol=1e-5)
    assert not np.isclose(pred.probabilities.sum(), 1.0)


def test_runtime_refuses_a_tokenizer_file_outside_the_bundle(siglip_bundle, tmp_path):
    from rada_export.runtimes.tokenizer import load_tokenizer

    with pytest.raises(RadaError, match="not a path inside the bundle"):
        load_tokenizer(siglip_bundle.bundle, {"kind": "hf_tokenizers", "file": "../x.json", "context_length": 16})
