"""The bundle manifest: what a device needs to know about a bundle, and its checksums.

Shared by the exporter (which writes it) and the runtime (which reads and checks it); it needs
only the standard library.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rada_export.errors import RadaError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"

# Graph names and what each computes.
IMAGE_ENCODER = "image_encoder"  # pixels (B x 3 x H x W) -> image_features (B x D)
TEXT_ENCODER = "text_encoder"  # token_ids (K x L) -> text_features (K x D)
HEAD = "head"  # image_features (B x D), text_features (K x D) -> logits (B x K)
FUSED = "model"  # pixels -> logits (B x K), image_features (B x D)
GRAPH_NAMES = (FUSED, IMAGE_ENCODER, TEXT_ENCODER, HEAD)


@dataclass
class Preprocess:
    size: list[int]  # [height, width]
    mode: str
    mean: list[float]
    std: list[float]
    interpolation: str
    resize_mode: str
    fill_color: int = 0


@dataclass
class GraphEntry:
    """One ONNX graph of the bundle."""

    file: str  # relative to the bundle
    precision: str  # fp32 | fp16 | int8
    inputs: dict[str, list[Any]]  # name -> shape with symbolic dims as strings
    outputs: dict[str, list[Any]]
    input_dtypes: dict[str, str] = field(default_factory=dict)
    external_data: str | None = None  # relative path of the weights file, when used
    notes: str = ""


@dataclass
class HeadConfig:
    embed_dim: int
    num_heads: int
    temperature: float
    logit_scale: float


@dataclass
class Manifest:
    model: str
    pretrained: str
    embed_dim: int
    preprocess: Preprocess
    logit_scale: float
    head: HeadConfig
    class_names: list[str]
    templates: list[str]
    context_length: int
    opset: int
    max_batch: int
    graphs: dict[str, GraphEntry]  # key: "<graph>" for fp32, "<graph>.fp16", "<graph>.int8"
    embed_preprocess: bool = False  # the fused graph takes uint8 N x H x W x 3 frames
    pretrained_cfg: str | None = None  # the open_clip tag whose settings (activation, preprocessing) apply
    resolved: dict[str, Any] = field(default_factory=dict)  # what was built: quick_gelu, activations, preprocess
    logit_bias: float | None = None  # SigLIP's learned bias; None for softmax (contrastive) families
    probability: str = "softmax"  # how logits become probabilities: softmax over classes, or sigmoid (SigLIP)
    tokenizer: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    calibration: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        data = dict(data)
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise RadaError(
                f"bundle manifest has schema version {version}, this rada-export reads {SCHEMA_VERSION}",
                "re-export the bundle with this version of rada-export",
            )
        data["preprocess"] = Preprocess(**data["preprocess"])
        data["head"] = HeadConfig(**data["head"])
        data["graphs"] = {k: GraphEntry(**v) for k, v in data["graphs"].items()}
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def graph_key(self, graph: str, precision: str = "fp32") -> str:
        return graph if precision == "fp32" else f"{graph}.{precision}"

    def graph(self, graph: str, precision: str = "fp32") -> GraphEntry:
        key = self.graph_key(graph, precision)
        if key not in self.graphs:
            have = ", ".join(sorted(self.graphs)) or "none"
            raise RadaError(
                f"the bundle has no {graph} graph in {precision} (it has: {have})",
                "re-export with `rada-export onnx --fp16` for FP16, or `rada-export calibrate` for INT8",
            )
        return self.graphs[key]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(bundle: str | os.PathLike) -> Manifest:
    bundle = Path(bundle)
    path = bundle / MANIFEST_NAME
    if not bundle.is_dir():
        raise RadaError(f"bundle {bundle} is not a folder", "pass the folder written by `rada-export onnx --out`")
    if not path.is_file():
        raise RadaError(f"{bundle} has no {MANIFEST_NAME}", "pass the folder written by `rada-export onnx --out`")
    try:
        return Manifest.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise RadaError(f"{path} is not a valid manifest ({err})", "re-export the bundle") from err


def write_manifest(bundle: str | os.PathLike, manifest: Manifest) -> Path:
    """Writes manifest.json atomically."""
    path = Path(bundle) / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def checksum_files(bundle: str | os.PathLike, relative_paths: list[str]) -> dict[str, str]:
    bundle = Path(bundle)
    return {rel: sha256_file(bundle / rel) for rel in sorted(relative_paths)}


def verify_checksums(bundle: str | os.PathLike, manifest: Manifest, only: list[str] | None = None) -> None:
    """Raises a RadaError naming every missing or altered file (all of them, or those in `only`)."""
    bundle = Path(bundle)
    missing, altered = [], []
    for rel, expected in manifest.files.items():
        if only is not None and rel not in only:
            continue
        path = bundle / rel
        if not path.is_file():
            missing.append(rel)
        elif sha256_file(path) != expected:
            altered.append(rel)
    if missing or altered:
        parts = []
        if missing:
            parts.append(f"missing: {', '.join(missing)}")
        if altered:
            parts.append(f"checksum mismatch (corrupt or modified): {', '.join(altered)}")
        raise RadaError(
            f"bundle {bundle} failed its integrity check; " + "; ".join(parts),
            "copy the bundle again in full, or re-export it",
        )
