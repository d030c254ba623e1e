"""TTA settings are bounded where float32 (or memory) stops following them, and a step that still
makes non-finite weights is dropped: the head keeps its last good weights and counts the step."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from rada_export.cli.app import app
from rada_export.errors import RadaError
from rada_export.runtimes import load_bundle
from rada_export.runtimes.tta import F32_TINY, MAX_BETA, MAX_LR, MAX_VIEWS, TTAConfig

# Continual settings under which the tiny bundle's random head steps on every frame.
EVERY_FRAME = dict(mode="continual", e_margin=1.0, continual_batch=1, collapse_share=1.0)


@pytest.mark.parametrize("settings, field, needle", [
    (dict(eps=1e-46), "eps", "smallest normal"),  # rounds to 0 in float32
    (dict(eps=1e-39), "eps", "smallest normal"),  # subnormal in float32
    (dict(eps=2.0), "eps", "[1.18e-38, 1]"),
    (dict(weight_decay=200.0), "weight_decay", "lr * weight_decay = 1"),
    (dict(continual_lr=1e-5, continual_weight_decay=1e5), "continual_weight_decay", "must stay above 0"),
    (dict(lr=0.5), "lr", f"[1.18e-38, {MAX_LR:g}]"),
    (dict(continual_lr=1e-40), "continual_lr", "0 (no updates)"),
    (dict(views=MAX_VIEWS + 1), "views", f"[1, {MAX_VIEWS}]"),
    (dict(views=10**9), "views", "crop held in memory"),
    (dict(steps=1000), "steps", "[1, 100]"),
    (dict(collapse_window=10**10), "collapse_window", "16 bytes per frame"),
    (dict(continual_batch=10**9), "continual_batch", "[1, 65536]"),
    (dict(anchor=1e39), "anchor", "overflow float32"),
    (dict(mask_anchor=1e7), "mask_anchor", "[0, 1e+06]"),
    (dict(betas=(0.9, 1.0 - 1e-9)), "betas", "rounds to 1 in float32"),
    (dict(keep=0.0), "keep", "(0, 1]"),
    (dict(restore=1.0), "restore", "[0, 1)"),
    (dict(e_margin=0.0), "e_margin", "(0, 1]"),
])
def test_settings_outside_float32_or_memory_are_refused_with_their_field(settings, field, needle):
    with pytest.raises(RadaError) as caught:
        TTAConfig(**settings)
    assert caught.value.field == field and caught.value.fix
    assert needle in caught.value.problem, caught.value.problem


def test_the_edges_themselves_are_accepted():
    TTAConfig(eps=F32_TINY, views=MAX_VIEWS, lr=MAX_LR, weight_decay=0.99 / MAX_LR, betas=(MAX_BETA, MAX_BETA))
    TTAConfig(continual_lr=0.0, continual_weight_decay=1e30)  # no updates: the decay never applies
    assert np.float32(MAX_BETA) < 1.0 and np.float32(F32_TINY) == np.finfo(np.float32).tiny


@pytest.fixture(scope="module")
def bundle(shared_tiny_bundle) -> Path:
    return shared_tiny_bundle(classes=["cat", "dog", "bird"], verify=False)


def frames(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40, 50, 3), dtype=np.uint8) for _ in range(count)]


def poison(config: TTAConfig, **values) -> None:
    """Sets values the constructor refuses, as a config that slipped past the checks would carry."""
    for name, value in values.items():
        object.__setattr__(config, name, value)


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_the_reported_settings_now_fail_at_construction():
    """eps below float32's smallest normal turned the continual head to NaN for good (39 of 40
    predictions), and so did lr * weight_decay >= 1; both are refused before any frame."""
    with pytest.raises(RadaError, match="smallest normal"):
        TTAConfig(**EVERY_FRAME, eps=1e-46)
    with pytest.raises(RadaError, match="continual_lr \\* continual_weight_decay"):
        TTAConfig(**EVERY_FRAME, continual_lr=1e-5, continual_weight_decay=3e5)


def test_a_non_finite_continual_step_keeps_the_last_good_head(bundle):
    config = TTAConfig(**EVERY_FRAME)
    rt = load_bundle(bundle, backend="onnxruntime", device="cpu", tta=config)
    stream, probe = frames(20), frames(3, seed=1)
    for frame in stream[:5]:
        rt.predict([frame], adapt=True)
    assert rt.head.updates == 5 and rt.head.adapted
    good, good_logits = rt.head.weights(), rt.predict(probe).logits
    updates, skipped = rt.head.updates, rt.head.skipped_nonfinite

    # Weight decay far past 1 / lr: every step now overflows float32 and makes infinite weights.
    poison(config, continual_weight_decay=1e45)
    for frame in stream[5:15]:
        assert np.isfinite(rt.predict([frame], adapt=True).logits).all()
    assert rt.head.skipped_nonfinite == skipped + 10 and rt.head.updates == updates
    assert same_weights(rt.head.weights(), good)
    assert np.array_equal(rt.predict(probe).logits, good_logits)

    poison(config, continual_weight_decay=0.0)  # adaptation goes on from the last good head
    for frame in stream[15:]:
        rt.predict([frame], adapt=True)
    assert rt.head.updates == updates + 5 and np.isfinite(rt.predict(probe).logits).all()


def test_the_reported_eps_can_no_longer_poison_the_head(bundle):
    """The reported case itself, past the constructor: eps = 1e-46 is 0 in float32, so a weight
    whose gradient is 0 got 0 / 0 = NaN. Every such step is now dropped and counted."""
    config = TTAConfig(**EVERY_FRAME)
    poison(config, eps=1e-46)
    rt = load_bundle(bundle, backend="onnxruntime", device="cpu", tta=config)
    probe = frames(3, seed=1)
    deployed = rt.predict(probe).logits
    logits = np.concatenate([rt.predict([f], adapt=True).logits for f in frames(40)])
    assert np.isfinite(logits).all()  # was NaN for 39 of the 40 frames
    assert rt.head.skipped_nonfinite == 40 and rt.head.updates == 0
    assert same_weights(rt.head.weights(), rt.head.weights(deployed=True))
    assert np.array_equal(rt.predict(probe).logits, deployed)


def test_a_non_finite_episodic_step_predicts_with_the_last_good_weights(bundle):
    images = frames(2, seed=2)
    plain = load_bundle(bundle, backend="onnxruntime", device="cpu", tta=TTAConfig(mode="episodic", views=4, lr=0.0))
    expected = plain.predict(images, adapt=True).logits  # no step: the episode's starting weights
    config = TTAConfig(mode="episodic", views=4, steps=2)
    poison(config, weight_decay=1e45)
    rt = load_bundle(bundle, backend="onnxruntime", device="cpu", tta=config)
    logits = rt.predict(images, adapt=True).logits
    assert np.isfinite(logits).all() and np.array_equal(logits, expected)
    assert rt.head.skipped_nonfinite == 2 and rt.head.updates == 0
    assert rt.head.last_episode.steps == 0


def test_predict_views_is_bounded(bundle, tmp_path):
    Image.fromarray(frames(1)[0]).save(tmp_path / "img.png")
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        result = CliRunner().invoke(app, ["predict", "img.png", "--bundle", str(bundle), "--tta", "episodic",
                                          "--views", "100000"])
    finally:
        os.chdir(old)
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "Traceback" not in result.output and "--views" in text and f"[1, {MAX_VIEWS}]" in text, text
