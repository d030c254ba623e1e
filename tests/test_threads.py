"""One Runtime shared by 8 threads gives finite results, each image its own, as a serial run would.

- episodic: every image's result equals the serial run's exactly (episodes are isolated, and an
  image's views depend only on the seed and its pixels);
- continual: the updates apply in some serial order, so a serial replay in a reconstructed order
  reproduces every call's logits and the final weights bit for bit;
- no adaptation: equal to serial exactly, also while other threads adapt or change the classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from concurrency import in_threads
from rada_export.runtimes import TTAConfig, load_bundle
from rada_export.runtimes.preprocess import preprocess

CLASSES = ["red circle", "green square", "blue triangle", "yellow star", "purple ring", "orange cross"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_clip) -> Path:
    import torch

    from rada_export.checkpoint import HeadMetadata, save_head
    from rada_export.export.bundle import ExportRequest, export_bundle
    from rada_export.head import RAdaHead

    root = tmp_path_factory.mktemp("threads")
    torch.manual_seed(1)
    head = RAdaHead(tiny_clip.embed_dim, logit_scale=tiny_clip.logit_scale)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.05)
    save_head(root / "head.safetensors", head, HeadMetadata(embed_dim=tiny_clip.embed_dim, model="rada-tiny-ViT",
                                                            pretrained="none", class_names=CLASSES))
    export_bundle(ExportRequest(out=root / "bundle", ckpt=root / "head.safetensors", verify=False), clip=tiny_clip)
    return root / "bundle"


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (36 + i % 5, 40 + i % 7, 3), dtype=np.uint8) for i in range(48)]


def test_episodic_results_equal_the_serial_run_per_image(bundle, images):
    config = TTAConfig(mode="episodic", views=6, steps=2, lr=5e-2)
    serial_rt = load_bundle(bundle, backend="onnxruntime", device="cpu", tta=config, seed=5)
    serial = [serial_rt.predict(image, adapt=True).logits for image in images]
    rt = load_bundle(bundle, backend="onnxruntime", device="cpu", tta=config, seed=5)
    deployed = rt.head.weights(deployed=True)
    threaded = in_threads(lambda i: rt.predict(images[i], adapt=True).logits, list(range(len(images))))
    for i, (a, b) in enumerate(zip(serial, threaded)):
        assert np.isfinite(b).all()
        assert np.array_equal(a, b), f"image {i}: {np.abs(a - b).max()}"
    assert rt.head.counters.episodes == len(images)
    assert rt.head.updates == serial_rt.head.updates > 0  # the episodes adapted...
    for name, value in rt.head.weights().items():  # ...and the shared head never moved
        assert np.array_equal(value, deployed[name]), name
    # The adaptation mattered: an episode's logits differ from the frozen head's.
    frozen = load_bundle(bundle, backend="onnxruntime", device="cpu").predict(images[0]).logits
    assert np.abs(frozen - serial[0]).max() > 1e-4


def _continual_config() -> TTAConfig:
    # One update per frame and every frame confident: each call moves the weights, so the order
    # in which the calls took the lock is recoverable from their logits. The window exceeds the
    # stream, so the collapse guard never resets the head.
    return TTAConfig(mode="continual", continual_batch=1, continual_lr=1e-2, e_margin=1.0, collapse_window=256)


def test_continual_updates_apply_in_some_serial_order(bundle, images):
    rt = load_bundle(bundle, backend="onnxruntime", device="cpu", tta=_continual_config())
    recorded = in_threads(lambda i: rt.predict(images[i], adapt=True).logits, list(range(len(images))))
    assert all(np.isfinite(r).all() for r in recorded)
    assert rt.head.frames == len(images) and rt.head.updates == len(images)
    final = rt.head.weights()
    assert all(np.isfinite(w).all() for w in final.values())

    # Replay: at each step exactly the call whose logits match the current weights went next.
    replay = load_bundle(bundle, backend="onnxruntime", device="cpu", tta=_continual_config())
    features = {i: replay.encode(preprocess([images[i]], replay.manifest.preprocess, fast=True)) for i in range(len(images))}
    remaining, order = set(range(len(images))), []
    while remaining:
        matches = [i for i in sorted(remaining) if np.array_equal(replay.head.logits(features[i]), recorded[i])]
        assert matches, f"no call matches the weights after {order}: not a serial order"
        i = matches[0]
        assert np.array_equal(replay.predict(images[i], adapt=True).logits, recorded[i])
        order.append(i)
        remaining.remove(i)
    for name, value in replay.head.weights().items():
        assert np.array_equal(value, final[name]), name


def test_predictions_without_adaptation_equal_serial_while_others_adapt(bundle, images):
    rt = load_bundle(bundle, backend="onnxruntime", device="cpu", tta=_continual_config())
    serial = [rt.predict(image).logits for image in images]  # the fused graph: the head is deployed
    jobs = [("adapt", i) if i % 2 else ("frozen", i) for i in range(len(images))]

    def run(job):
        kind, i = job
        return rt.predict(images[i], adapt=kind == "adapt")

    out = in_threads(run, jobs)
    for (kind, i), pred in zip(jobs, out):
        assert np.isfinite(pred.logits).all() and pred.logits.shape == (1, len(CLASSES))
        assert pred.class_names[0] == CLASSES[int(pred.labels[0])]
    rt.reset()
    after = in_threads(lambda i: rt.predict(images[i]).logits, list(range(len(images))))
    for a, b in zip(serial, after):
        assert np.array_equal(a, b)


def test_class_changes_are_atomic_for_concurrent_predictions(bundle, images):
    rt = load_bundle(bundle, backend="onnxruntime", device="cpu")
    lists = [CLASSES, ["cat", "dog"], ["car", "bus", "bike"]]

    def run(i):
        if i % 4 == 0:
            rt.set_classes(lists[(i // 4) % 3])
            return None
        return rt.predict(images[i])

    for pred in in_threads(run, list(range(len(images)))):
        if pred is None:
            continue
        assert pred.classes in lists and pred.logits.shape == (1, len(pred.classes))
        assert np.isfinite(pred.logits).all() and pred.class_names[0] == pred.classes[int(pred.labels[0])]
