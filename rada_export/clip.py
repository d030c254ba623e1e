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

from .errors import RadaError
from .progress import quiet_root_logger

# Small configurations of our own (tests, `demo --quick`); registered beside open_clip's.
_OWN_CONFIGS = Path(__file__).parent / "model_configs"
_registered = False

OFFLINE_HINT = (
    "use `--pretrained none` for random weights (smoke runs only), or `--pretrained /path/to/weights.pt` "
    "with a weights file downloaded elsewhere"
)


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

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().item())

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


def _resolve_pretrained(model_name: str, pretrained: str | os.PathLike | None) -> str | None:
    """Returns what open_clip's `pretrained=` takes, or raises a RadaError naming the fix."""
    import open_clip

    if pretrained is None or str(pretrained).lower() in ("", "none", "random"):
        return None
    text = str(pretrained)
    if os.path.sep in text or text.endswith((".pt", ".pth", ".bin", ".safetensors")) or Path(text).exists():
        path = Path(text).expanduser()
        if not path.is_file():
            raise RadaError(f"weights file {text!r} does not exist", "pass an existing file, a pretrained tag, or `none`")
        return str(path)
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if text not in tags:
        known = ", ".join(tags) if tags else "none published"
        raise RadaError(
            f"unknown pretrained tag {text!r} for {model_name} (known tags: {known})",
            "pick one of the known tags, a local weights file, or `none` for random weights",
        )
    return text


def load_clip(model_name: str, pretrained: str | os.PathLike | None = "none", device: str = "cpu") -> LoadedClip:
    """Builds an open_clip model, its eval preprocessing and its tokenizer.

    ``pretrained`` is an open_clip tag (``openai``, ``laion2b_s34b_b88k``...), a local weights file,
    or ``none`` for random weights.
    """
    import open_clip

    register_own_configs()
    if model_name not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if model_name.lower().replace("/", "-") in m.lower()][:8]
        raise RadaError(
            f"unknown open_clip model {model_name!r}" + (f" (did you mean: {', '.join(close)}?)" if close else ""),
            "run `python -c 'import open_clip; print(open_clip.list_models())'` for the known names",
        )
    resolved = _resolve_pretrained(model_name, pretrained)
    try:
        # Random weights come from a fixed seed, so that a later `verify` rebuilds the same model.
        with torch.random.fork_rng(devices=[]), quiet_root_logger():  # open_clip warns for every model built without weights
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=resolved, device=device)
    except Exception as err:  # a bad weights file raises whatever its loader raises (SafetensorError, UnpicklingError...)
        if resolved is None:
            raise
        if not Path(resolved).is_file():
            raise RadaError(
                f"could not fetch pretrained weights {model_name}/{resolved}: {str(err).splitlines()[0][:300]}",
                OFFLINE_HINT,
            ) from err
        raise RadaError(
            f"weights file {resolved} cannot be loaded into {model_name} ({type(err).__name__}: "
            f"{(str(err).splitlines() or [''])[0][:300]})",
            "pass an open_clip weights file (.safetensors, or a torch checkpoint of tensors) saved for this architecture",
        ) from err
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(model_name)
    embed_dim = int(model.text_projection.shape[1]) if getattr(model, "text_projection", None) is not None else None
    if embed_dim is None:
        embed_dim = int(open_clip.get_model_config(model_name)["embed_dim"])
    return LoadedClip(
        model=model,
        model_name=model_name,
        pretrained="none" if resolved is None else str(pretrained),
        preprocess=preprocess,
        preprocess_config=PreprocessConfig.from_model(model),
        tokenizer=tokenizer,
        embed_dim=embed_dim,
        context_length=int(getattr(tokenizer, "context_length", 77)),
    )
