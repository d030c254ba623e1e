"""Which open_clip model to build, with which weights and which pretrained settings.

open_clip keeps the settings a set of weights was trained with in two places: the pretrained tag's
config (``open_clip.pretrained``: ``quick_gelu``, mean, std, interpolation, resize mode) and, for the
``hf-hub:`` / ``local-dir:`` forms, the ``open_clip_config.json`` beside the weights. A model name
alone gives the architecture's defaults, which are wrong for many weights: OpenAI's were trained
with QuickGELU, MobileCLIP's with mean 0 / std 1 and bilinear resizing, SigLIP's with 0.5 / 0.5 and
``squash``. open_clip only warns on a QuickGELU mismatch and silently takes defaults for a bare
weights file, so every route here resolves the settings first and names them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import RadaError

# What open_clip's pretrained configs say about preprocessing (keys of its PreprocessCfg).
PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")
SCHEMAS = ("hf-hub:", "local-dir:")
DEFAULT_TAG = "openai"
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz")

OFFLINE_HINT = (
    "use `--pretrained none` for random weights (smoke runs only), `--pretrained /path/to/weights.pt "
    "--pretrained-cfg TAG` with a weights file downloaded elsewhere, or `--model local-dir:/path` with "
    "a folder holding open_clip_config.json and the weights"
)


@dataclass(frozen=True)
class ClipSource:
    """A resolved request: what open_clip is asked to build and where its settings come from."""

    model: str  # as the user named it (may carry hf-hub: / local-dir:)
    pretrained: str  # tag, weights file, "none" (random), or "" (the schema source's own weights)
    pretrained_cfg: str | None  # the tag whose settings apply (a tag, or the one named for a file)
    settings_from: str  # human-readable origin of activation and preprocessing
    quick_gelu: bool  # QuickGELU forced on top of the model config
    force_preprocess: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def schema(self) -> str | None:
        return next((s[:-1] for s in SCHEMAS if self.model.startswith(s)), None)

    @property
    def random_weights(self) -> bool:
        return self.pretrained == "none"

    @property
    def open_clip_pretrained(self) -> str | None:
        """What open_clip's ``pretrained=`` takes (schema names carry their own weights)."""
        if self.schema or self.random_weights:
            return None
        return self.pretrained


def _is_random(text: str) -> bool:
    return text.lower() in ("", "none", "random")


def _looks_like_file(text: str) -> bool:
    return os.path.sep in text or text.endswith(WEIGHT_SUFFIXES) or Path(text).exists()


def _tag_cfg(model: str, tag: str) -> dict[str, Any]:
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    cfg = get_pretrained_cfg(model, tag)
    if not cfg:
        tags = list_pretrained_tags_by_model(model)
        known = ", ".join(tags) if tags else "none published"
        raise RadaError(
            f"unknown pretrained tag {tag!r} for {model} (known tags: {known})",
            "pick one of the known tags, a local weights file, or `none` for random weights",
        )
    return cfg


def _model_quick_gelu(model: str) -> bool:
    import open_clip

    cfg = open_clip.get_model_config(model) or {}
    return bool(cfg.get("quick_gelu", False))


def _check_schema_source(model: str) -> None:
    if model.startswith("local-dir:"):
        folder = Path(model.removeprefix("local-dir:")).expanduser()
        if not folder.is_dir():
            raise RadaError(f"{model}: folder {folder} does not exist", "pass local-dir: with the folder that holds open_clip_config.json")
        if not (folder / "open_clip_config.json").is_file():
            raise RadaError(
                f"{model}: {folder} has no open_clip_config.json",
                "save the model with open_clip's push_to_hf_hub/save helpers, or pass the weights file as pretrained "
                "with pretrained_cfg=TAG", field="model",
            )
    elif not model.removeprefix("hf-hub:").strip("/"):
        raise RadaError(f"{model!r} names no repository", "write hf-hub:org/repo")


def _file_settings(model: str, path: Path, pretrained_cfg: str | None) -> tuple[str | None, str, bool, dict, tuple[str, ...]]:
    """Settings for a bare weights file: a named tag's, else the model config's, with a warning."""
    from open_clip.pretrained import list_pretrained_tags_by_model

    if pretrained_cfg:
        cfg = _tag_cfg(model, pretrained_cfg)
        force = {k: cfg[k] for k in PREPROCESS_KEYS if k in cfg}
        return pretrained_cfg, f"pretrained tag {pretrained_cfg!r} (named for {path.name})", bool(cfg.get("quick_gelu")), force, ()
    tags = list_pretrained_tags_by_model(model)
    from open_clip.transform import PreprocessCfg

    default = PreprocessCfg()
    settings = (f"quick_gelu={_model_quick_gelu(model)}, mean={tuple(round(x, 4) for x in default.mean)}, "
                f"std={tuple(round(x, 4) for x in default.std)}, interpolation={default.interpolation}, "
                f"resize_mode={default.resize_mode}")
    sibling = path.parent / "open_clip_config.json"
    hint = (f"pass --model local-dir:{path.parent} (it holds open_clip_config.json)" if sibling.is_file()
            else f"pass --pretrained-cfg TAG naming the weights' origin (known for {model}: {', '.join(tags) or 'none'})")
    warning = f"weights file {path.name}: nothing says how it was trained, so {model}'s defaults apply ({settings}); {hint}"
    return None, f"{model} model defaults (weights file, no tag named)", False, {}, (warning,)


def resolve_source(model: str, pretrained: str | os.PathLike | None = None, pretrained_cfg: str | None = None) -> ClipSource:
    """Resolves (model, weights, settings tag) the way open_clip's own tags and configs define them.

    ``pretrained`` is a tag, a weights file, ``none`` for random weights, or None (``openai`` for
    built-in names; the folder's or repository's own weights for ``hf-hub:`` / ``local-dir:``).
    ``pretrained_cfg`` names the tag whose settings apply to a weights file or to random weights.
    """
    text = None if pretrained is None else str(pretrained)
    if model.startswith(SCHEMAS):
        _check_schema_source(model)
        if pretrained_cfg:
            raise RadaError(f"pretrained_cfg={pretrained_cfg!r} does not apply to {model}",
                            "leave it out: the open_clip_config.json of hf-hub:/local-dir: sources carries the settings",
                            field="pretrained_cfg")
        if text is not None and not _is_random(text) and text != "default":
            raise RadaError(f"pretrained={text!r} does not apply to {model}: it carries its own weights",
                            "leave it out (or pass pretrained='none' for random weights with that config)", field="pretrained")
        random = text is not None and _is_random(text)
        return ClipSource(model, "none" if random else "", None, "open_clip_config.json of " + model,
                          quick_gelu=False)
    if text is None:
        text = DEFAULT_TAG
    if _is_random(text):
        if pretrained_cfg:
            cfg = _tag_cfg(model, pretrained_cfg)
            force = {k: cfg[k] for k in PREPROCESS_KEYS if k in cfg}
            return ClipSource(model, "none", pretrained_cfg, f"pretrained tag {pretrained_cfg!r} (random weights)",
                              bool(cfg.get("quick_gelu")) and not _model_quick_gelu(model), force)
        return ClipSource(model, "none", None, f"{model} model defaults (random weights)", False)
    if _looks_like_file(text):
        path = Path(text).expanduser()
        if not path.is_file():
            raise RadaError(f"weights file {text!r} does not exist", "pass an existing file, a pretrained tag, or `none`")
        tag, origin, quick, force, warnings = _file_settings(model, path, pretrained_cfg)
        return ClipSource(model, str(path), tag, origin, quick and not _model_quick_gelu(model), force, warnings)
    cfg = _tag_cfg(model, text)
    if pretrained_cfg and pretrained_cfg != text:
        raise RadaError(f"pretrained_cfg={pretrained_cfg!r} contradicts the tag {text}",
                        "leave it out: a tag carries its own settings", field="pretrained_cfg")
    # open_clip merges the tag's preprocessing itself; the activation it only warns about.
    return ClipSource(model, text, text, f"pretrained tag {text!r}",
                      bool(cfg.get("quick_gelu")) and not _model_quick_gelu(model))
