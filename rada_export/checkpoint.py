"""Head checkpoints: the project's safetensors file and the paper's reference torch checkpoints.

Our format is one ``.safetensors`` file: the six projections under their own names, optionally the
class text features, and a JSON document under the ``rada_export`` metadata key. A fine-tuned
checkpoint also carries the encoder tensors it trained, under ``encoder.`` + the open_clip
state-dict name, and says so in its metadata (``encoder``; format version 2, so that an older
rada-export refuses it rather than exporting the pretrained encoder under a fine-tuned head). The paper's code
saves torch pickles whose ``state_dict`` holds ``mha.*`` keys; those are read with
``weights_only=True`` so that no untrusted pickle code can run.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ._version import __version__
from .errors import RadaError
from .head import PROJECTION_NAMES, RAdaHead

METADATA_KEY = "rada_export"
TEXT_FEATURES_KEY = "text_features"
ENCODER_PREFIX = "encoder."
FORMAT_VERSION = 2  # the newest this version reads; head-only checkpoints are still written as 1
HEAD_ONLY_FORMAT = 1


@dataclass
class HeadMetadata:
    """What a head checkpoint says about how it was made and what it needs."""

    embed_dim: int
    num_heads: int = 8
    temperature: float = 1.0
    logit_scale: float = 100.0
    model: str | None = None
    pretrained: str | None = None
    pretrained_cfg: str | None = None  # the tag whose settings apply (a weights file's origin)
    # What the CLIP model was built as (activation, preprocessing, logit_bias): export checks its rebuild against it.
    resolved: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    source: str = "rada-export"
    format_version: int = HEAD_ONLY_FORMAT
    # Fine-tuned encoder tensors in the file: {"towers": [...], "tensors": n, "wise_alpha": a}; empty for a head only.
    encoder: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "checkpoint") -> "HeadMetadata":
        """Metadata from an untrusted file: every field is checked, so a bad value is a RadaError here."""
        if not isinstance(data, dict):
            raise RadaError(f"{origin}: its {METADATA_KEY} metadata is a JSON {type(data).__name__}, not an object",
                            "pass a head.safetensors written by rada-export train")
        known = {f for f in cls.__dataclass_fields__}
        meta = cls(**{k: v for k, v in data.items() if k in known})
        meta.check(origin)
        return meta

    def check(self, origin: str) -> None:
        from . import validate

        fix = "the checkpoint is corrupt or was edited: re-train it, or pass the checkpoint as rada-export train wrote it"
        try:
            version = validate.integer("format_version", self.format_version, 1)
            if version > FORMAT_VERSION:
                raise RadaError(f"{origin} has format_version {version}; this rada-export ({__version__}) reads up to "
                                f"{FORMAT_VERSION}", "upgrade rada-export (pip install -U rada-export)")
            validate.integer("embed_dim", self.embed_dim, 0)
            validate.integer("num_heads", self.num_heads, 1)
            validate.number("temperature", self.temperature, positive=True)
            validate.number("logit_scale", self.logit_scale, positive=True)
        except RadaError as err:
            if err.problem.startswith(origin):
                raise
            raise RadaError(f"{origin}: {err.problem}", fix) from None
        for name in ("class_names", "templates"):
            value = getattr(self, name)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise RadaError(f"{origin}: metadata {name} is not a list of strings", fix)
        for name in ("model", "pretrained"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise RadaError(f"{origin}: metadata {name} is not a string", fix)
        for name in ("training", "versions", "encoder"):
            if not isinstance(getattr(self, name), dict):
                raise RadaError(f"{origin}: metadata {name} is not an object", fix)
        if self.embed_dim and self.embed_dim % self.num_heads:
            raise RadaError(f"{origin}: num_heads {self.num_heads} does not divide embed_dim {self.embed_dim}", fix)


@dataclass
class HeadCheckpoint:
    head: RAdaHead
    metadata: HeadMetadata
    text_features: torch.Tensor | None = None
    # open_clip state-dict name -> tensor, for the towers a fine-tuning run trained; None for a head only.
    encoder_state: dict[str, torch.Tensor] | None = None

    @property
    def fine_tuned(self) -> bool:
        return bool(self.encoder_state)


def tool_versions() -> dict[str, str]:
    versions = {"rada_export": __version__, "torch": torch.__version__}
    try:
        import open_clip

        versions["open_clip"] = open_clip.__version__
    except ImportError:  # pragma: no cover - export extra always has it
        pass
    return versions


def save_head(
    path: str | os.PathLike,
    head: RAdaHead,
    metadata: HeadMetadata,
    text_features: torch.Tensor | None = None,
    encoder_state: dict[str, torch.Tensor] | None = None,
    encoder_record: dict[str, Any] | None = None,
) -> Path:
    """Writes the checkpoint atomically (temporary file, then rename).

    ``encoder_state`` (open_clip state-dict names) makes it a fine-tuned checkpoint; ``encoder_record``
    says how it was made (towers, WiSE alpha). Without tensors no encoder record is written, even
    when ``metadata`` carries one: the file must not claim weights it lacks.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    path = Path(path)
    if path.is_dir():
        raise RadaError(f"output {path} is a folder", "give a file name such as head.safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    if text_features is not None:
        tensors[TEXT_FEATURES_KEY] = text_features.detach().cpu().float().contiguous()
    meta = asdict(metadata)
    meta["encoder"], meta["format_version"] = {}, HEAD_ONLY_FORMAT
    if encoder_state:
        for key, value in encoder_state.items():
            tensors[ENCODER_PREFIX + key] = value.detach().cpu().contiguous().clone()
        meta["encoder"] = {**(encoder_record or metadata.encoder or {}), "tensors": len(encoder_state)}
        meta["format_version"] = FORMAT_VERSION
    meta.update(head.config)
    meta.setdefault("versions", {})
    meta["versions"] = {**tool_versions(), **meta["versions"]}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={METADATA_KEY: json.dumps(meta)})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private
        os.replace(tmp, path)
    except (OSError, SafetensorError) as err:  # disk full (ENOSPC), a file too large for the filesystem (EFBIG)
        reason = getattr(err, "strerror", None) or (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise RadaError(f"could not write the checkpoint {path} ({reason})",
                        "free disk space (or pick a filesystem that takes larger files) and rerun; nothing was replaced",
                        field="out") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _head_from_state(state: dict[str, torch.Tensor], meta: HeadMetadata, origin: str) -> RAdaHead:
    expected = {f"{n}.{p}" for n in PROJECTION_NAMES for p in ("weight", "bias")}
    missing = sorted(expected - set(state))
    if missing:
        raise RadaError(
            f"{origin} lacks head parameters: {', '.join(missing[:4])}{'...' if len(missing) > 4 else ''}",
            "pass a RAda head checkpoint (rada-export train output, or the paper's code with mha.* keys)",
        )
    first = state["q_proj1.weight"]
    dim = first.shape[0] if first.ndim == 2 else 0
    for key in expected:
        shape = tuple(state[key].shape)
        want = (dim, dim) if key.endswith("weight") else (dim,)
        if shape != want or dim == 0:
            raise RadaError(f"{origin}: {key} has shape {shape}, expected {want if dim else '(D, D) or (D,)'}",
                            "the checkpoint is corrupt or not a RAda head")
        if not state[key].is_floating_point() or not bool(torch.isfinite(state[key]).all()):
            raise RadaError(f"{origin}: {key} is not a finite floating-point tensor", "the checkpoint is corrupt or not a RAda head")
    if meta.embed_dim and meta.embed_dim != dim:
        raise RadaError(f"{origin}: metadata says embed_dim {meta.embed_dim}, the weights are {dim}-d",
                        "the checkpoint is corrupt or was edited: re-train it")
    if dim % meta.num_heads:
        raise RadaError(f"{origin}: num_heads {meta.num_heads} does not divide the embedding size {dim}",
                        "the checkpoint is corrupt or was edited: re-train it")
    meta.embed_dim = dim
    head = RAdaHead(dim, meta.num_heads, meta.temperature, meta.logit_scale)
    head.load_state_dict({k: state[k].float() for k in expected})
    return head


def _load_safetensors(path: Path) -> HeadCheckpoint:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = (f.metadata() or {}).get(METADATA_KEY)
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise RadaError(f"{path} is not a readable safetensors file ({err})", "pass a head.safetensors written by rada-export train") from err
    if raw_meta:
        try:
            data = json.loads(raw_meta)
        except ValueError as err:
            raise RadaError(f"{path}: its {METADATA_KEY} metadata is not JSON ({err})",
                            "pass a head.safetensors written by rada-export train") from None
        meta = HeadMetadata.from_dict(data, str(path))
    else:
        meta = HeadMetadata(embed_dim=0, source="safetensors")
    text = state.pop(TEXT_FEATURES_KEY, None)
    if text is not None and (text.ndim != 2 or not text.is_floating_point() or not bool(torch.isfinite(text).all())):
        raise RadaError(f"{path}: {TEXT_FEATURES_KEY} is not a finite K x D float tensor", "re-train the checkpoint")
    encoder = _encoder_tensors(state, meta, path)
    state = {k.removeprefix("mha."): v for k, v in state.items() if not k.startswith(ENCODER_PREFIX)}
    head = _head_from_state(state, meta, str(path))
    return HeadCheckpoint(head, meta, text, encoder)


def _encoder_tensors(state: dict[str, torch.Tensor], meta: HeadMetadata, path: Path) -> dict[str, torch.Tensor] | None:
    """The fine-tuned encoder tensors, checked against the metadata's own count; None for a head only."""
    encoder = {k[len(ENCODER_PREFIX):]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
    fix = "the checkpoint is corrupt or was edited: re-train it"
    if not encoder and not meta.encoder:
        return None
    if meta.encoder.get("tensors") != len(encoder):
        raise RadaError(f"{path}: its metadata records {meta.encoder.get('tensors', 0)} fine-tuned encoder tensors, "
                        f"the file holds {len(encoder)}", fix)
    for key, value in encoder.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise RadaError(f"{path}: encoder tensor {key} is not finite", fix)
    return encoder


def _load_reference(path: Path) -> HeadCheckpoint:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise RadaError(
            f"{path} is not a loadable torch checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:200]})",
            "pass a head.safetensors from rada-export train, or a torch state_dict of the paper's code "
            "(only tensors and plain containers are read; pickled objects are refused)",
        ) from err
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise RadaError(f"{path} holds no state_dict of tensors", "pass a checkpoint whose state_dict has mha.q_proj1.weight and so on")
    state = {}
    for key, value in obj.items():
        name = key.split("mha.", 1)[1] if "mha." in key else key.removeprefix("module.")
        state[name] = value
    meta = HeadMetadata(embed_dim=0, source=f"reference checkpoint {path.name}")
    return HeadCheckpoint(_head_from_state(state, meta, str(path)), meta, None)


def load_head(path: str | os.PathLike) -> HeadCheckpoint:
    """Loads our safetensors checkpoints or the paper's torch checkpoints (``weights_only=True``)."""
    path = Path(path)
    if not path.exists():
        raise RadaError(f"checkpoint {path} does not exist", "check the path; without a checkpoint, export starts from a fresh "
                        "(zero-shot) head")
    if path.is_dir():
        raise RadaError(f"checkpoint {path} is a folder", "pass the head.safetensors file itself")
    with open(path, "rb") as fh:
        magic = fh.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header. Its first byte can
    # be anything (0x80 for a 10,112-byte header), so that layout is checked before torch's own:
    # "PK" (zip) or 0x80 (a legacy pickle). Anything else is tried as safetensors, for its error.
    header = int.from_bytes(magic[:8], "little")
    if len(magic) == 9 and magic[8:9] == b"{" and header <= path.stat().st_size - 8:
        return _load_safetensors(path)
    if magic[:2] == b"PK" or magic[:1] == b"\x80":
        return _load_reference(path)
    return _load_safetensors(path)


def load_clip_for_checkpoint(
    ckpt: HeadCheckpoint | None, model_name: str, pretrained: str | None, pretrained_cfg: str | None = None,
    origin: str = "checkpoint",
):
    """The CLIP model a head checkpoint goes with: open_clip's build, then the fine-tuned encoder
    tensors when the checkpoint carries them (``load_clip`` otherwise).

    A fine-tuned checkpoint records the pretrained weights it started from; a different
    ``pretrained`` would put its text tower beside an image tower tuned from other weights, so it
    is refused. ``pretrained`` / ``pretrained_cfg`` left None take the checkpoint's record.
    """
    from .clip import apply_encoder_weights, load_clip

    if ckpt is not None:
        pretrained = pretrained if pretrained is not None else (ckpt.metadata.pretrained or None)
        pretrained_cfg = pretrained_cfg if pretrained_cfg is not None else ckpt.metadata.pretrained_cfg
    if ckpt is not None and ckpt.fine_tuned:
        recorded = ckpt.metadata.pretrained
        if pretrained is not None and recorded and pretrained != recorded:
            raise RadaError(
                f"{origin} fine-tuned the encoder from pretrained={recorded!r}, not {pretrained!r}",
                "leave pretrained out: a fine-tuned checkpoint carries its own image encoder", field="pretrained",
            )
    clip = load_clip(model_name, pretrained, pretrained_cfg=pretrained_cfg)
    if ckpt is not None and ckpt.fine_tuned:
        record = {k: v for k, v in ckpt.metadata.encoder.items() if k != "tensors"}
        apply_encoder_weights(clip, ckpt.encoder_state, origin, record)
    return clip
