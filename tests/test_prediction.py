"""The Prediction object as a camera loop uses it, and the bundle's channel order as the default."""

from __future__ import annotations

import numpy as np
import pytest

from rada_export import RadaError
from rada_export.runtimes import load_bundle
from rada_export.runtimes.prediction import ImageResult, Prediction

CLASSES = ["cat", "dog", "bird", "fish"]


@pytest.fixture(scope="module")
def rgb_runtime(shared_tiny_bundle):
    return load_bundle(shared_tiny_bundle(classes=CLASSES, verify=False), backend="onnxruntime", device="cpu")


@pytest.fixture(scope="module")
def bgr_runtime(shared_tiny_bundle):
    bundle = shared_tiny_bundle(classes=CLASSES, verify=False, embed_preprocess=True, channel_order="bgr")
    return load_bundle(bundle, backend="onnxruntime", device="cpu")


def frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 48, 64, 3), dtype=np.uint8)


def test_a_prediction_reads_as_a_sequence_of_image_results(rgb_runtime):
    p = rgb_runtime.predict(frames(3))
    assert len(p) == 3 and isinstance(p[0], ImageResult)
    results = list(p)
    assert [r.label for r in results] == p.class_names and [r.index for r in results] == p.labels.tolist()
    for i, r in enumerate(results):
        assert r.position == i and r.label == CLASSES[r.index]
        assert r.score == pytest.approx(float(p.probabilities[i].max())) and r.score == float(p.probabilities[i, r.index])
        assert r.top(2) == p.top(2)[i] and r.top(1)[0] == (r.label, r.score)
        np.testing.assert_array_equal(r.image_features, p.image_features[i])
    assert p[-1].position == 2 and p[np.int64(1)].position == 1
    with pytest.raises(IndexError, match="out of range"):
        p[3]
    with pytest.raises(TypeError):
        p["cat"]
    with pytest.raises(RadaError, match="for one image, and this prediction holds 3") as err:
        p.label
    assert "prediction[i].label" in err.value.fix


def test_one_image_reads_as_its_result_and_the_repr_is_short(rgb_runtime):
    p = rgb_runtime.predict(frames(1)[0])
    assert len(p) == 1 and p.label == p.class_names[0] == p[0].label
    assert p.score == p[0].score and p.index == int(p.labels[0])
    assert p.top(1)[0][0] == (p.label, p.score)  # the batched form, as the CLI and examples use it
    assert set(p.to_dict()) == {"labels", "class_names", "classes", "probabilities", "logits"}
    text = repr(p)
    assert text.startswith("Prediction(1 image over 4 classes: ") and repr(p.label) in text and len(text) < 100
    assert len(repr(rgb_runtime.predict(frames(40)))) < 200  # no feature dump, whatever the batch
    assert repr(p[0]) == f"ImageResult({p.label!r}, score={p.score:.3f}, index={p.index})"
    assert isinstance(p, Prediction)


def test_raw_frames_default_to_the_bundles_channel_order(bgr_runtime, rgb_runtime):
    bgr = frames(2, seed=5)
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    assert bgr_runtime.channel_order == "bgr" and rgb_runtime.channel_order == "rgb"
    default = bgr_runtime.predict(bgr)
    np.testing.assert_array_equal(default.logits, bgr_runtime.predict(bgr, bgr=True).logits)
    np.testing.assert_allclose(default.logits, bgr_runtime.predict(rgb, bgr=False).logits, atol=1e-5)
    swapped = bgr_runtime.predict(bgr, bgr=False)  # an explicit order still wins
    assert np.abs(swapped.logits - default.logits).max() > 1e-3
    # A bundle without a channel order takes RGB, as before
    np.testing.assert_array_equal(rgb_runtime.predict(rgb).logits, rgb_runtime.predict(rgb, bgr=False).logits)
    assert np.abs(rgb_runtime.predict(rgb).logits - rgb_runtime.predict(rgb, bgr=True).logits).max() > 1e-3
    with pytest.raises(RadaError, match="bgr must be True, False or None") as err:
        bgr_runtime.predict(bgr, bgr="yes")
    assert err.value.field == "bgr"
