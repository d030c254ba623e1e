"""The family matrix: every open_clip family edge users deploy, through the whole chain.

Each family runs train -> onnx (FP32 + FP16, verified) -> calibrate (both INT8 graphs) -> the
torch-free runtime with set_classes. The default run covers every family on a tiny configuration of
its real architecture plus the full-size ViT-B-32 through the `openai` tag; `pytest -m slow` adds the
full-size architectures of the other families (a few minutes each on 2 cores). families.py says how
each family's weights and pretrained settings are supplied. The matrix's time per family and its
cosines are printed at the end (`pytest -s`).
"""

from __future__ import annotations

import shutil
import time

import numpy as np
import onnx
import pytest

from families import FULL_FAMILIES, TINY_FAMILIES, VIT_B32_OPENAI, Family

MATRIX = ([pytest.param(f, id=f"tiny-{f.name}") for f in TINY_FAMILIES]
          + [pytest.param(VIT_B32_OPENAI, id="full-vit-openai")]
          + [pytest.param(f, id=f"full-{f.name}", marks=pytest.mark.slow) for f in FULL_FAMILIES])

_TIMES: dict[str, dict[str, float]] = {}
_FIGURES: dict[str, dict[str, float]] = {}  # per family: FP16 / INT8 image-feature cosine (printed at the end)


@pytest.fixture(params=MATRIX)
def chain(request, family_chain):
    family: Family = request.param
    built = family_chain(family)
    _TIMES.setdefault(request.node.callspec.id, {}).update(built.seconds)
    return built


def _record(chain, step: str, start: float) -> None:
    key = f"{'full' if chain.family is VIT_B32_OPENAI or chain.family in FULL_FAMILIES else 'tiny'}-{chain.family.name}"
    _TIMES.setdefault(key, {})[step] = time.perf_counter() - start


def test_train_and_export_honour_the_pretrained_settings(chain):
    from rada_export.checkpoint import load_head

    family, exported = chain.family, chain.exported
    resolved = load_head(chain.trained.checkpoint).metadata.resolved
    for record in (resolved, exported.manifest.resolved):
        assert record["quick_gelu"] is family.quick_gelu
        assert record["preprocess"]["mean"] == pytest.approx(list(family.mean))
        assert (record["preprocess"]["interpolation"], record["preprocess"]["resize_mode"]) == (family.interpolation, family.resize_mode)
    if family.weights != "local-dir":  # a local-dir folder's settings come from its open_clip_config.json, not a tag
        assert exported.manifest.pretrained_cfg == family.tag
    pre = exported.manifest.preprocess
    assert (pre.interpolation, pre.mean) == (family.interpolation, pytest.approx(list(family.mean)))
    if family.quick_gelu:
        # GELU exports as Erf; QuickGELU is x * sigmoid(1.702 x): the text tower must have no Erf.
        text = onnx.load(str(exported.bundle / "text_encoder.onnx"), load_external_data=False)
        assert not [n for n in text.graph.node if n.op_type in ("Erf", "Gelu")]
        assert "QuickGELU" in resolved["activations"] and "GELU" not in resolved["activations"]


def test_family_traits_survive_into_the_graph(chain):
    """What makes each family different is in the image graph that was exported."""
    family, exported = chain.family, chain.exported
    graph = onnx.load(str(exported.bundle / "image_encoder.onnx"), load_external_data=False)
    ops = [n.op_type for n in graph.graph.node]
    if family.reparameterizes:
        # Folded for inference: the training-time conv + BatchNorm branches are gone (MobileCLIP-S1 unfolded
        # has 80 BatchNormalization nodes; folded, the few left belong to blocks without a parallel branch).
        assert exported.manifest.resolved["reparameterized"] is True and ops.count("BatchNormalization") <= 4
        assert exported.report.passed  # the parity check ran against open_clip's unfolded model
    else:
        assert exported.manifest.resolved.get("reparameterized") is not True
    if family.name in ("resnet", "convnext", "mobileclip"):
        assert "Conv" in ops
    if family.siglip:
        assert exported.manifest.logit_bias is not None


def test_export_verifies_fp32_and_fp16(chain):
    from rada_export.export.verify import verify_bundle

    start = time.perf_counter()
    exported = chain.exported
    assert exported.report.passed
    assert {"model", "image_encoder", "text_encoder", "head", "model.fp16", "image_encoder.fp16"} <= set(exported.manifest.graphs)
    with chain.offline_hub():
        report = verify_bundle(exported.bundle)  # rebuilt from the manifest's record, as `rada-export verify` does
    assert report.passed
    fp16 = [r for r in report.results if r.precision == "fp16" and r.output == "image_features"]
    assert fp16
    _FIGURES.setdefault(chain.family.name + ("" if chain.family.weights == "local-dir" else " (full)"), {})["fp16 min cosine"] = min(r.min_cosine for r in fp16)
    _record(chain, "verify", start)


def test_calibrate_writes_both_int8_graphs(chain):
    result = chain.calibrated
    outcomes = {o.key: o for o in result.graphs}  # Q/DQ over FP32 (ONNX Runtime) and over FP16 (TensorRT)
    assert sorted(outcomes) == ["model.int8", "model.int8_fp16"]
    outcome, over_fp16 = outcomes["model.int8"], outcomes["model.int8_fp16"]
    assert outcome.layers > 0
    for o in (outcome, over_fp16):
        assert o.report.mean_cosine > 0.9, o.report.figures()
    _FIGURES.setdefault(chain.family.name + ("" if chain.family.weights == "local-dir" else " (full)"), {}).update(
        {"int8 mean cosine": outcome.report.mean_cosine, "int8 layers": outcome.layers,
         "int8_fp16 mean cosine": over_fp16.report.mean_cosine})


def test_runtime_set_classes_matches_the_host(chain, tmp_path):
    """The torch-free runtime's tokenizer + text graph give the host's class features (text_features.npy
    was computed by open_clip at export), then serve a new class list, on every precision the bundle has."""
    from rada_export.runtimes.runtime import load_bundle

    start = time.perf_counter()
    bundle = tmp_path / "bundle"
    shutil.copytree(chain.exported.bundle, bundle)  # set_classes changes nothing on disk, but tests own copies
    m = chain.exported.manifest
    host = np.load(bundle / "text_features.npy")
    frame = np.random.default_rng(0).integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
    for precision in ("fp32", "fp16", "int8"):
        runtime = load_bundle(bundle, backend="onnxruntime", precision=precision)
        device = runtime.text_features(m.class_names, m.templates)
        assert np.min(np.sum(host * device, axis=1)) > 0.9999
        runtime.set_classes(["red square", "blue circle", "green triangle"])
        prediction = runtime.predict(frame)
        assert prediction.logits.shape == (1, 3) and np.isfinite(prediction.logits).all(), precision
    _record(chain, "runtime", start)


def teardown_module():
    """Prints the matrix's time per family and step (pytest -s shows it)."""
    total = sum(sum(steps.values()) for steps in _TIMES.values())
    print(f"\nfamily matrix time: {total:.0f} s")
    for name, steps in _TIMES.items():
        print(f"  {name}: " + ", ".join(f"{k} {v:.1f} s" for k, v in steps.items()))
    for name, figures in _FIGURES.items():
        print(f"  {name}: " + ", ".join(f"{k} {v:.5f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()))
