"""The family matrix's families and the chain each runs: train -> onnx (FP32 + FP16, verified) ->
calibrate (both INT8 graphs). Built once per session and shared (conftest's ``family_chain``).

Tiny configurations (tiny_families.py) run in the default test run; they reach open_clip through a
``local-dir:`` folder (``open_clip_config.json`` + weights, as open_clip's hub repositories ship them)
whose preprocessing is the one the family's best-known pretrained tag defines, read from open_clip's
own registry. One full-size ViT-B-32 runs by default as well, through the real ``openai`` tag (its
download redirected to a local Hugging Face cache holding random weights; OpenAI's weights need
QuickGELU, which open_clip only warns about). The other full-size families run under ``-m slow``:

- SigLIP: random weights with the ``webli`` tag's settings (0.5 / 0.5, squash); its tokenizer is a small
  T5-style tokenizer.json in the local hub cache (_hfcache.py), which the runtime reads too.
- MobileCLIP-S1: a bare weights file with ``pretrained_cfg="datacompdr"`` (mean 0, std 1, bilinear).

MobileCLIP's BatchNorm statistics are randomised so that reparameterization has real work to do.
Random weights make the cosine figures optimistic (features of random towers are close to isotropic
and INT8 ranges are benign); they check the graphs, not the accuracy of real weights.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _hfcache import add_repo, add_t5_style_tokenizer, save_random_weights, use_cache

OPENAI_VIT_B32_REPO = "timm/vit_base_patch32_clip_224.openai"  # open_clip's hf_hub entry for ViT-B-32/openai
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)


@dataclass(frozen=True)
class Family:
    name: str
    model: str
    # "local-dir" (a tiny config with the tag's preprocessing), "none" (random weights with the tag's
    # settings), "hub" (the tag through a redirected download) or "file" (weights file + pretrained_cfg)
    weights: str
    tag: str | None = None  # the pretrained tag whose settings apply
    tag_model: str | None = None  # the full-size model whose tag a tiny config borrows
    quick_gelu: bool = False
    mean: tuple[float, ...] = OPENAI_MEAN
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    randomise_batchnorm: bool = False

    @property
    def reparameterizes(self) -> bool:
        return "MobileCLIP" in self.model

    @property
    def siglip(self) -> bool:
        return "SigLIP" in self.model


TINY_FAMILIES = [
    Family("vit", "rada-tiny-ViT", "local-dir", "openai", "ViT-B-32", quick_gelu=True),
    Family("resnet", "rada-tiny-RN", "local-dir", "openai", "RN50", quick_gelu=True),
    Family("convnext", "rada-tiny-convnext", "local-dir"),
    Family("mobileclip", "rada-tiny-MobileCLIP", "local-dir", "datacompdr", "MobileCLIP-S1", mean=(0.0, 0.0, 0.0),
           interpolation="bilinear", randomise_batchnorm=True),
    Family("eva", "rada-tiny-EVA02", "local-dir"),
    Family("siglip", "rada-tiny-SigLIP-timm", "local-dir", "webli", "ViT-B-16-SigLIP", mean=(0.5, 0.5, 0.5),
           resize_mode="squash"),
    Family("coca", "rada-tiny-coca", "local-dir"),
]
VIT_B32_OPENAI = Family("vit-openai", "ViT-B-32", "hub", "openai", quick_gelu=True)
FULL_FAMILIES = [  # under -m slow; ViT-B-32 runs by default
    Family("resnet", "RN50", "none", "openai", quick_gelu=True),
    Family("convnext", "convnext_tiny", "none"),
    Family("mobileclip", "MobileCLIP-S1", "file", "datacompdr", mean=(0.0, 0.0, 0.0), interpolation="bilinear",
           randomise_batchnorm=True),
    Family("eva", "EVA02-B-16", "none"),
    Family("siglip", "ViT-B-16-SigLIP", "none", "webli", mean=(0.5, 0.5, 0.5), resize_mode="squash"),
    Family("coca", "coca_ViT-B-32", "none"),
]


@dataclass
class Chain:
    family: Family
    root: Path
    trained: Any  # TrainResult
    exported: Any  # ExportResult (FP32 + FP16, verified)
    calibrated: Any  # CalibrateResult (Q/DQ over FP32 and over FP16)
    seconds: dict[str, float]
    hub_cache: Path | None  # the local hub the family's downloads come from, if any

    @contextlib.contextmanager
    def offline_hub(self):
        """The family's hub redirect again, for a rebuild from the record (`verify`)."""
        with pytest.MonkeyPatch.context() as monkeypatch:
            if self.hub_cache is not None:
                use_cache(monkeypatch, self.hub_cache)
            yield


def randomise_batchnorm(model, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics: fresh ones (mean 0, var 1) would make folding them a no-op."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
            m.running_var.copy_(torch.empty(m.running_var.shape).uniform_(0.5, 1.5, generator=gen))
            m.weight.data.copy_(torch.empty(m.weight.shape).uniform_(0.5, 1.5, generator=gen))


def _tag_preprocess(family: Family) -> dict:
    """The preprocessing the borrowed tag defines, from open_clip's registry (empty: the model's defaults)."""
    if not family.tag_model:
        return {}
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(family.tag_model, family.tag)
    return {k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in cfg}


def weights_source(family: Family, root: Path) -> tuple[str, str | None, str | None]:
    """(model, pretrained, pretrained_cfg) for train; writes the weights where the family's route finds
    them (a hub's files under root / "hub")."""
    import open_clip
    import torch

    if family.siglip:
        # open_clip fetches SigLIP's tokenizer from the hub: a small one of the same kind, offline.
        add_t5_style_tokenizer(root / "hub", "timm/ViT-B-16-SigLIP")
    torch.manual_seed(1)
    if family.weights == "local-dir":
        model_cfg = dict(open_clip.get_model_config(family.model), quick_gelu=family.quick_gelu)
        folder = root / "local-dir"
        folder.mkdir()
        model = open_clip.create_model(family.model, force_quick_gelu=family.quick_gelu)
        if family.randomise_batchnorm:
            randomise_batchnorm(model)
        save_random_weights(model, folder / "open_clip_model.safetensors", half=False)
        if family.siglip:  # open_clip reads a local-dir model's Hugging Face tokenizer from the folder itself
            for file in (root / "hub").glob("models--*/snapshots/*/*"):
                if file.name != "config.json":
                    shutil.copy(file, folder / file.name)
        (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg,
                                                                  "preprocess_cfg": _tag_preprocess(family)}))
        return f"local-dir:{folder}", None, None
    if family.weights == "none":
        return family.model, "none", family.tag
    if family.weights == "hub":
        # The weights of the tag's own architecture (QuickGELU), as OpenAI's release has them.
        model = open_clip.create_model(f"{family.model}-quickgelu")
        weights = save_random_weights(model, root / "weights.safetensors")
        add_repo(root / "hub", OPENAI_VIT_B32_REPO, {"open_clip_model.safetensors": weights})
        return family.model, family.tag, None
    model = open_clip.create_model(family.model)
    if family.randomise_batchnorm:
        randomise_batchnorm(model)
    return family.model, str(save_random_weights(model, root / f"{family.model}.safetensors", half=False)), family.tag


def calibration_images(folder: Path, count: int = 24) -> Path:
    """Seeded random frames: calibration needs the graph's ranges here, not its accuracy."""
    from PIL import Image

    if not folder.is_dir():
        folder.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, size=(120, 160, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def build_chain(family: Family, root: Path, image_folder: Path) -> Chain:
    """Trains, exports (FP32 + FP16, verified) and calibrates one family."""
    model, pretrained, pretrained_cfg = weights_source(family, root)
    chain = Chain(family, root, None, None, None, {}, root / "hub" if (root / "hub").is_dir() else None)
    with chain.offline_hub():
        chain.trained, chain.exported, chain.calibrated = _run(chain, model, pretrained, pretrained_cfg, image_folder)
    return chain


def _run(chain: Chain, model: str, pretrained: str | None, pretrained_cfg: str | None, image_folder: Path):
    from rada_export.calibration.bundle import CalibrateRequest, calibrate_bundle
    from rada_export.export.bundle import ExportRequest, export_bundle
    from rada_export.train import TrainConfig
    from rada_export.train_job import TrainJob, run_train_job

    root, seconds = chain.root, chain.seconds
    start = time.perf_counter()
    trained = run_train_job(TrainJob(
        data=image_folder, out=root / "head.safetensors", model=model, pretrained=pretrained,
        pretrained_cfg=pretrained_cfg, aug_copies=1, val_fraction=0.25, config=TrainConfig(epochs=2),
    ))
    seconds["train"] = time.perf_counter() - start
    start = time.perf_counter()
    # The export rebuilds the model from the checkpoint's record alone.
    exported = export_bundle(ExportRequest(out=root / "bundle", ckpt=trained.checkpoint, fp16=True))
    seconds["onnx"] = time.perf_counter() - start
    start = time.perf_counter()
    calibrated = calibrate_bundle(CalibrateRequest(
        bundle=exported.bundle, images=calibration_images(root / "calibration-images"), samples=16, holdout=8,
        graph="model", cache_dir=root / "calibration-cache", accept_degraded=True))
    seconds["calibrate"] = time.perf_counter() - start
    return trained, exported, calibrated
