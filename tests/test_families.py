"""The family matrix (issue 10): every open_clip family edge users deploy, through the whole chain.

Each family runs train -> onnx (FP32 + FP16, verified) -> calibrate (INT8) -> the torch-free runtime
with set_classes, on random weights and a small generated image folder. Where a family has a
pretrained tag whose settings matter, the weights come through that tag's own route:

- ViT-B-32 ``openai``: the tag's download is redirected to a local Hugging Face cache holding random
  weights (the hub is the only network component; open_clip and huggingface_hub run unchanged).
  OpenAI's weights need QuickGELU, which open_clip only warns about.
- SigLIP: random weights with the ``webli`` tag's settings (0.5 / 0.5, squash); its tokenizer is a small
  T5-style tokenizer.json in the local hub cache (tests/_hfcache.py), which the runtime reads too.
- MobileCLIP-S1: a bare weights file with ``pretrained_cfg="datacompdr"`` (mean 0, std 1, bilinear),
  BatchNorm statistics randomised so that reparameterization has real work to do.

Random weights make the cosine figures optimistic (features of random towers are close to
isotropic and INT8 ranges are benign); they check the graphs, not the accuracy of real weights.
Marked slow: a few minutes per family on 2 cores. The matrix's total time is printed at the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
import torch

from _hfcache import add_repo, add_t5_style_tokenizer, save_random_weights, use_cache

pytestmark = pytest.mark.slow

OPENAI_VIT_B32_REPO = "timm/vit_base_patch32_clip_224.openai"  # open_clip's hf_hub entry for ViT-B-32/openai
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]


@dataclass(frozen=True)
class Family:
    name: str
    model: str
    weights: str  # "none", "hub" (the tag through a redirected download) or "file" (weights file + pretrained_cfg)
    tag: str | None = None
    quick_gelu: bool = False
    mean: tuple[float, ...] = tuple(OPENAI_MEAN)
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"


FAMILIES = [
    Family("vit-openai", "ViT-B-32", "hub", "openai", quick_gelu=True),
    Family("resnet", "RN50", "none", "openai", quick_gelu=True),
    Family("convnext", "convnext_tiny", "none"),
    Family("mobileclip", "MobileCLIP-S1", "file", "datacompdr", mean=(0.0, 0.0, 0.0), interpolation="bilinear"),
    Family("eva", "EVA02-B-16", "none"),
    Family("siglip", "ViT-B-16-SigLIP", "none", "webli", mean=(0.5, 0.5, 0.5), resize_mode="squash"),
    Family("coca", "coca_ViT-B-32", "none"),
]

_TIMES: dict[str, float] = {}
_FIGURES: dict[str, dict[str, float]] = {}  # per family: FP16 / INT8 image-feature cosine (printed at the end)


def _randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics: fresh ones (mean 0, var 1) would make folding them a no-op."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
            m.running_var.copy_(torch.empty(m.running_var.shape).uniform_(0.5, 1.5, generator=gen))
            m.weight.data.copy_(torch.empty(m.weight.shape).uniform_(0.5, 1.5, generator=gen))


def _weights_source(family: Family, root, monkeypatch) -> tuple[str, str | None]:
    """(pretrained, pretrained_cfg) for train; writes the weights where the family's route finds them."""
    import open_clip

    if "SigLIP" in family.model:
        # open_clip fetches SigLIP's tokenizer from the hub: a small one of the same kind, offline.
        add_t5_style_tokenizer(root / "hub", f"timm/{family.model}")
        use_cache(monkeypatch, root / "hub")
    if family.weights == "none":
        return "none", family.tag
    torch.manual_seed(1)
    if family.weights == "hub":
        # The weights of the tag's own architecture (QuickGELU), as OpenAI's release has them.
        model = open_clip.create_model(f"{family.model}-quickgelu")
        weights = save_random_weights(model, root / "weights.safetensors")
        add_repo(root / "hub", OPENAI_VIT_B32_REPO, {"open_clip_model.safetensors": weights})
        use_cache(monkeypatch, root / "hub")
        return family.tag, None
    model = open_clip.create_model(family.model)
    _randomise_batchnorm(model)
    return str(save_random_weights(model, root / f"{family.model}.safetensors", half=False)), family.tag


@pytest.fixture(scope="module", params=FAMILIES, ids=[f.name for f in FAMILIES])
def chain(request, tmp_path_factory, image_folder):
    """One family trained and exported (FP32 + FP16, verified); the artifacts of one family at a time."""
    from rada_export.export.bundle import ExportRequest, export_bundle
    from rada_export.train import TrainConfig
    from rada_export.train_job import TrainJob, run_train_job

    family: Family = request.param
    root = tmp_path_factory.mktemp(family.name)
    start = time.perf_counter()
    with pytest.MonkeyPatch.context() as monkeypatch:
        pretrained, pretrained_cfg = _weights_source(family, root, monkeypatch)
        trained = run_train_job(TrainJob(
            data=image_folder, out=root / "head.safetensors", model=family.model, pretrained=pretrained,
            pretrained_cfg=pretrained_cfg, aug_copies=1, val_fraction=0.25, config=TrainConfig(epochs=2),
        ))
        # The export rebuilds the model from the checkpoint's record alone.
        exported = export_bundle(ExportRequest(out=root / "bundle", ckpt=trained.checkpoint, fp16=True))
        yield family, root, trained, exported
    _TIMES[family.name] = _TIMES.get(family.name, 0.0) + time.perf_counter() - start


def _record(family_name: str, start: float) -> None:
    _TIMES[family_name] = _TIMES.get(family_name, 0.0) + time.perf_counter() - start


def test_train_and_export_honour_the_pretrained_settings(chain):
    from rada_export.checkpoint import load_head

    family, _, trained, exported = chain
    resolved = load_head(trained.checkpoint).metadata.resolved
    for record in (resolved, exported.manifest.resolved):
        assert record["quick_gelu"] is family.quick_gelu
        assert record["preprocess"]["mean"] == pytest.approx(list(family.mean))
        assert (record["preprocess"]["interpolation"], record["preprocess"]["resize_mode"]) == (family.interpolation, family.resize_mode)
    assert exported.manifest.pretrained_cfg == family.tag
    pre = exported.manifest.preprocess
    assert (pre.interpolation, pre.mean) == (family.interpolation, pytest.approx(list(family.mean)))
    if family.quick_gelu:
        # GELU exports as Erf; QuickGELU is x * sigmoid(1.702 x): the text tower must have no Erf.
        text = onnx.load(str(exported.bundle / "text_encoder.onnx"))
        assert not [n for n in text.graph.node if n.op_type in ("Erf", "Gelu")]
        assert "QuickGELU" in resolved["activations"] and "GELU" not in resolved["activations"]


def test_export_verifies_fp32_and_fp16(chain):
    family, _, _, exported = chain
    start = time.perf_counter()
    assert exported.report.passed
    assert {"model", "image_encoder", "text_encoder", "head", "model.fp16", "image_encoder.fp16"} <= set(exported.manifest.graphs)
    from rada_export.export.verify import verify_bundle

    report = verify_bundle(exported.bundle)  # rebuilt from the manifest's record, as `rada-export verify` does
    assert report.passed
    fp16 = [r for r in report.results if r.precision == "fp16" and r.output == "image_features"]
    assert fp16
    _FIGURES.setdefault(family.name, {})["fp16 min cosine"] = min(r.min_cosine for r in fp16)
    _record(family.name, start)


def test_mobileclip_is_reparameterized_and_matches_the_unfolded_model(chain):
    family, _, _, exported = chain
    if family.name != "mobileclip":
        pytest.skip("only MobileCLIP has training-time branches")
    graph = onnx.load(str(exported.bundle / "image_encoder.onnx"), load_external_data=False)
    ops = [n.op_type for n in graph.graph.node]
    # Unfolded, MobileCLIP-S1's image encoder has 80 BatchNormalization nodes (issue 10); folded, the few left
    # belong to blocks without a parallel branch.
    assert ops.count("BatchNormalization") <= 4 and exported.manifest.resolved["reparameterized"] is True
    assert exported.report.passed  # the parity check ran against open_clip's unfolded model


def test_calibrate_int8(chain):
    from rada_export.calibration.bundle import CalibrateRequest, calibrate_bundle

    family, root, _, exported = chain
    start = time.perf_counter()
    result = calibrate_bundle(CalibrateRequest(bundle=exported.bundle, images=_calibration_images(root), samples=16,
                                               holdout=8, graph="image_encoder", cache_dir=root / "cache", accept_degraded=True))
    outcomes = {o.key: o for o in result.graphs}  # Q/DQ over FP32 (ONNX Runtime) and over FP16 (TensorRT)
    assert sorted(outcomes) == ["image_encoder.int8", "image_encoder.int8_fp16"]
    outcome, over_fp16 = outcomes["image_encoder.int8"], outcomes["image_encoder.int8_fp16"]
    assert outcome.layers > 0
    for o in (outcome, over_fp16):
        assert o.report.mean_cosine > 0.9, o.report.figures()
    _FIGURES.setdefault(family.name, {}).update({"int8 mean cosine": outcome.report.mean_cosine, "int8 layers": outcome.layers,
                                                 "int8_fp16 mean cosine": over_fp16.report.mean_cosine})
    _record(family.name, start)


def _calibration_images(root):
    from PIL import Image

    folder = root / "calibration-images"
    if not folder.is_dir():
        folder.mkdir()
        rng = np.random.default_rng(0)
        for i in range(24):
            Image.fromarray(rng.integers(0, 256, size=(120, 160, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_runtime_set_classes_matches_the_host(chain):
    """The torch-free runtime's tokenizer + text graph give the host's class features (text_features.npy
    was computed by open_clip at export), then serve a new class list."""
    from rada_export.runtimes.runtime import load_bundle

    family, _, _, exported = chain
    start = time.perf_counter()
    runtime = load_bundle(exported.bundle, backend="onnxruntime")
    m = exported.manifest
    host = np.load(exported.bundle / "text_features.npy")
    device = runtime.text_features(m.class_names, m.templates)
    assert np.min(np.sum(host * device, axis=1)) > 0.9999
    runtime.set_classes(["red square", "blue circle", "green triangle"])
    frame = np.random.default_rng(0).integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
    prediction = runtime.predict(frame)
    assert prediction.logits.shape == (1, 3) and np.isfinite(prediction.logits).all()
    _record(family.name, start)


def teardown_module():
    """Prints the matrix's time per family (pytest -s shows it)."""
    total = sum(_TIMES.values())
    print("\nfamily matrix time: " + ", ".join(f"{k} {v:.0f} s" for k, v in _TIMES.items()) + f"; total {total:.0f} s")
    for name, figures in _FIGURES.items():
        print(f"  {name}: " + ", ".join(f"{k} {v:.5f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()))
