"""Loading open_clip models with their own preprocessing, tokenizer and logit scale.

Nothing here hard-codes one architecture: sizes, normalisation, interpolation and the logit scale
all come from the model that open_clip builds.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .clip_source import OFFLINE_HINT, ClipSource, resolve_source
from .hub_access import check_fetchable
from .errors import RadaError
from .progress import quiet_root_logger

# Small configurations of our own (tests, `demo --quick`); registered beside open_clip's.
_OWN_CONFIGS = Path(__file__).parent / "model_configs"
_registered = False



@dataclass(frozen=True)
class PreprocessConfig:
    """How pixels must be prepared for the image encoder (open_clip's own settings)."""

    size: tuple[int, int]
    mode: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    resize_mode: str
    fill_color: int = 0

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> "PreprocessConfig":
        cfg = dict(model.visual.preprocess_cfg)
        size = cfg["size"]
        size = (size, size) if isinstance(size, int) else tuple(size)
        return cls(
            size=tuple(int(x) for x in size),
            mode=cfg.get("mode", "RGB"),
            mean=tuple(float(x) for x in cfg["mean"]),
            std=tuple(float(x) for x in cfg["std"]),
            interpolation=cfg.get("interpolation", "bicubic"),
            resize_mode=cfg.get("resize_mode", "shortest"),
            fill_color=int(cfg.get("fill_color", 0)),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d


@dataclass
class LoadedClip:
    """An open_clip model in eval mode with everything needed to use it the way it was trained."""

    model: torch.nn.Module
    model_name: str
    pretrained: str
    preprocess: Callable  # PIL image -> 3 x H x W tensor (open_clip's eval transform)
    preprocess_config: PreprocessConfig
    tokenizer: Callable
    embed_dim: int
    context_length: int
    source: ClipSource | None = None
    # Set when fine-tuned encoder tensors were loaded over the pretrained ones: what they were.
    encoder_weights: dict[str, Any] | None = None

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().item())

    @property
    def logit_bias(self) -> float | None:
        """SigLIP's learned bias (sigmoid probabilities); None for softmax (contrastive) families."""
        bias = getattr(self.model, "logit_bias", None)
        return None if bias is None else float(bias.reshape(-1)[0].item())

    @property
    def pretrained_cfg(self) -> str | None:
        return self.source.pretrained_cfg if self.source else None

    def resolved(self) -> dict[str, Any]:
        """What was built, for the checkpoint and the manifest; a rebuild must give the same."""
        return {
            "model": self.model_name,
            "pretrained": self.pretrained,
            "pretrained_cfg": self.pretrained_cfg,
            "settings_from": self.source.settings_from if self.source else "",
            "quick_gelu": uses_quick_gelu(self.model),
            "activations": activation_names(self.model),
            "preprocess": self.preprocess_config.to_dict(),
            "logit_bias": self.logit_bias,
            **({"encoder_weights": self.encoder_weights} if self.encoder_weights else {}),
        }

    @property
    def random_weights(self) -> bool:
        return self.pretrained == "none"


RANDOM_WEIGHTS_SEED = 0



def register_own_configs() -> None:
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(_OWN_CONFIGS)
        _registered = True


def activation_names(model: torch.nn.Module) -> list[str]:
    """The activation module types in the model (QuickGELU, GELU, ReLU...), for the record."""
    names = set()
    for module in model.modules():
        name = type(module).__name__
        if name in ("QuickGELU", "GELU", "GELUTanh", "ReLU", "SiLU", "Swish", "Hardswish", "ReLU6", "Sigmoid", "Tanh"):
            names.add(name)
    return sorted(names)


def uses_quick_gelu(model: torch.nn.Module) -> bool:
    from open_clip.transformer import QuickGELU

    return any(isinstance(m, QuickGELU) for m in model.modules())


def _check_model_name(model_name: str) -> None:
    import open_clip

    if model_name.startswith(("hf-hub:", "local-dir:")) or model_name in open_clip.list_models():
        return
    close = [m for m in open_clip.list_models() if model_name.lower().replace("/", "-") in m.lower()][:8]
    raise RadaError(
        f"unknown open_clip model {model_name!r}" + (f" (did you mean: {', '.join(close)}?)" if close else ""),
        "run `python -c 'import open_clip; print(open_clip.list_models())'` for the known names, "
        "or pass hf-hub:org/repo or local-dir:/path",
    )


def check_requirements(model_name: str) -> None:
    """Raises, before any work, when the model needs a package that is not installed.

    open_clip tokenizes SigLIP/SigLIP2 (and models with a Hugging Face text tower) through
    transformers' AutoTokenizer, and builds ConvNeXt/EVA/MobileCLIP/SigLIP image towers with timm;
    without them it fails deep inside model creation.
    """
    import importlib

    import open_clip

    cfg = open_clip.get_model_config(model_name) if not model_name.startswith("hf-hub:") else None
    text = (cfg or {}).get("text_cfg", {})
    vision = (cfg or {}).get("vision_cfg", {})
    needs = []
    if text.get("hf_tokenizer_name") or text.get("hf_model_name") or "siglip" in model_name.lower():
        needs.append(("transformers", "its Hugging Face tokenizer"))
    if vision.get("timm_model_name"):
        needs.append(("timm", f"its timm image tower ({vision['timm_model_name']})"))
    missing = []
    for pkg, why in needs:
        try:
            importlib.import_module(pkg)
        except ImportError:
            missing.append((pkg, why))
    if missing:
        raise RadaError(
            f"{model_name} needs " + " and ".join(f"the {pkg} package for {why}" for pkg, why in missing),
            "pip install 'rada-export[export]' (it lists them), or pip install " + " ".join(p for p, _ in missing),
        )


def load_clip(
    model_name: str, pretrained: str | os.PathLike | None = "none", device: str = "cpu", pretrained_cfg: str | None = None,
) -> LoadedClip:
    """Builds an open_clip model, its eval preprocessing and its tokenizer, as its weights were trained.

    ``model_name`` is an open_clip name or ``hf-hub:org/repo`` / ``local-dir:/path``.
    ``pretrained`` is an open_clip tag (``openai``, ``laion2b_s34b_b88k``...), a local weights file,
    ``none`` for random weights, or None for the default (``openai``; a schema source's own weights).
    ``pretrained_cfg`` names the tag whose settings (activation, preprocessing) apply to a weights
    file or to random weights. The tag's ``quick_gelu`` is honoured, which open_clip only warns about.
    What was guessed (a weights file with no tag named) is in ``.source.warnings`` for the caller to report.
    """
    import open_clip

    register_own_configs()
    _check_model_name(model_name)
    source = resolve_source(model_name, pretrained, pretrained_cfg)  # validates local-dir: folders first
    check_requirements(model_name)
    resolved = source.open_clip_pretrained
    if not source.schema:  # before open_clip's download retries, which offline cost most of a minute
        tag = resolved if resolved is not None and not Path(resolved).is_file() else None
        check_fetchable(model_name, tag, OFFLINE_HINT)
    try:
        # Random weights come from a fixed seed, so that a later `verify` rebuilds the same model.
        with torch.random.fork_rng(devices=[]), quiet_root_logger():  # open_clip warns for every model built without weights
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=resolved, device=device, force_quick_gelu=source.quick_gelu,
                load_weights=not source.random_weights,
                image_mean=source.force_preprocess.get("mean"), image_std=source.force_preprocess.get("std"),
                image_interpolation=source.force_preprocess.get("interpolation"),
                image_resize_mode=source.force_preprocess.get("resize_mode"),
            )
    except Exception as err:  # a bad weights file raises whatever its loader raises (SafetensorError, UnpicklingError...)
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        if source.schema == "hf-hub":
            raise RadaError(f"could not load {model_name}: {reason}", OFFLINE_HINT) from err
        if resolved is not None and not Path(resolved).is_file():
            raise RadaError(
                f"could not fetch pretrained weights {model_name}/{resolved}: {reason}",
                OFFLINE_HINT,
            ) from err
        if resolved is not None or source.schema:
            raise RadaError(
                f"weights {resolved or model_name} cannot be loaded into {model_name} ({type(err).__name__}: {reason})",
                "pass an open_clip weights file (.safetensors, or a torch checkpoint of tensors) saved for this architecture",
            ) from err
        raise
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        tokenizer = open_clip.get_tokenizer(model_name)
    except OSError as err:  # transformers' AutoTokenizer: a tokenizer the hub or the cache could not give
        raise RadaError(f"could not load the tokenizer of {model_name}: {str(err).strip().splitlines()[0]}",
                        "fill the Hugging Face cache on a machine with network (HF_HOME points at it), or use "
                        "model='local-dir:/path' with the tokenizer files beside open_clip_config.json") from err
    embed_dim = int(model.text_projection.shape[1]) if getattr(model, "text_projection", None) is not None else None
    if embed_dim is None:
        embed_dim = int(open_clip.get_model_config(model_name)["embed_dim"])
    return LoadedClip(
        model=model,
        model_name=model_name,
        pretrained=source.pretrained,
        preprocess=preprocess,
        preprocess_config=PreprocessConfig.from_model(model),
        tokenizer=tokenizer,
        embed_dim=embed_dim,
        context_length=int(getattr(tokenizer, "context_length", 77)),
        source=source,
    )


# What must come out the same when a checkpoint or a bundle is rebuilt from its record.
_REBUILD_KEYS = ("quick_gelu", "activations", "preprocess")


def check_rebuild(clip: LoadedClip, recorded: dict[str, Any], origin: str) -> None:
    """Raises when the model just built differs from the one recorded (activation, preprocessing)."""
    now = clip.resolved()
    diff = [f"{k}: recorded {recorded[k]!r}, rebuilt {now[k]!r}" for k in _REBUILD_KEYS if k in recorded and recorded[k] != now[k]]
    if diff:
        raise RadaError(
            f"{origin} was made with a different {clip.model_name} than this rebuild gives ({'; '.join(diff)[:400]})",
            f"pass pretrained_cfg={recorded.get('pretrained_cfg')!r} (the recorded settings), or use the open_clip version "
            "the record names" if recorded.get("pretrained_cfg") else "use the open_clip version the record names",
        )


def load_recorded(model: str, pretrained: str | None, pretrained_cfg: str | None, resolved: dict[str, Any], origin: str) -> LoadedClip:
    """Rebuilds the CLIP model a checkpoint or bundle records, and checks it is the same build."""
    clip = load_clip(model, pretrained or None, pretrained_cfg=pretrained_cfg)
    if resolved:
        check_rebuild(clip, resolved, origin)
    return clip


def apply_encoder_weights(clip: LoadedClip, state: dict[str, torch.Tensor], origin: str, record: dict[str, Any] | None = None) -> None:
    """Loads fine-tuned encoder tensors (open_clip state-dict names) into ``clip.model``, in place.

    Every tensor must name one of the model's own, with its shape; a tower is replaced whole (all
    of ``visual.*`` at least), so no half-tuned tower can pass. The tensors come from an untrusted
    file: they are checked before anything is copied.
    """
    own = clip.model.state_dict()
    fix = f"pass a checkpoint fine-tuned from {clip.model_name} (`rada-export train --finetune`)"
    unknown = sorted(k for k in state if k not in own)
    if unknown:
        raise RadaError(f"{origin}: encoder tensors {', '.join(unknown[:3])} are not in {clip.model_name}", fix)
    visual = [k for k in own if k.startswith("visual.")]
    missing = [k for k in visual if k not in state]
    if missing:
        raise RadaError(f"{origin}: the fine-tuned image tower lacks {', '.join(missing[:3])}", fix)
    for key, value in state.items():
        target = own[key]
        if tuple(value.shape) != tuple(target.shape) or value.is_floating_point() != target.is_floating_point():
            raise RadaError(f"{origin}: encoder tensor {key} is {tuple(value.shape)} {value.dtype}, "
                            f"{clip.model_name} has {tuple(target.shape)} {target.dtype}", fix)
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise RadaError(f"{origin}: encoder tensor {key} is not finite", fix)
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value.to(own[key].dtype))
    clip.encoder_weights = {"tensors": len(state), **(record or {})}
