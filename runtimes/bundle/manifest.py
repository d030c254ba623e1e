"""The bundle manifest: what a device needs to know about a bundle, and its checksums.

Shared by the exporter (which writes it) and the runtime (which reads and checks it); it needs
only the standard library and numpy (for the text features' header).

A bundle is untrusted input: ``read_manifest`` is the one way in, and it refuses a manifest whose
types, values or paths are wrong before anything it names is opened (paths.py confines the paths).
Every number and string is bounded (``MAX_*`` below), and the JSON itself is (json_io.py).
Reading changes nothing: an interrupted replacement is the next writer's to finish (swap.py).
To add a field, give ``Manifest`` (or a nested dataclass) an annotated attribute with a default:
``from_dict`` checks its JSON type from the annotation (use ``Optional[X]``, not ``X | None``, so
Python 3.9 can evaluate it); cross-checks between values go in ``Manifest.check``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Optional

from rada_export.errors import RadaError

from ..class_names import class_names_problem
from . import tokenizers
from .json_io import parse_json
from .layout import graph_key as layout_graph_key
# FUSED, HEAD, IMAGE_ENCODER and PRECISIONS are not used here: code written before the layout module
# imports them from the manifest module, and keeps doing so.
from .layout import (FUSED, GRAPH_NAMES, HEAD, IMAGE_ENCODER, MANIFEST_NAME, PRECISIONS, TEXT_ENCODER,  # noqa: F401
                     TEXT_FEATURES, VARIANT_PRECISION)
from .paths import check_graph_external_data, check_links, check_relative, confine

SCHEMA_VERSION = 1


# Bounds that keep a tampered manifest from asking for absurd work (a 100000 x 100000 image, a
# million-token context): far above any open_clip model, far below what exhausts a device.
MAX_IMAGE_SIDE = 4096
MAX_FRAME_SIDE = 8192  # camera frames into a frames graph (8K video, 48 MP stills are beyond it)
MAX_CONTEXT_LENGTH = tokenizers.MAX_CONTEXT_LENGTH
MAX_BATCH = 65536
MAX_EMBED_DIM = 65536
MAX_CLASSES = 100_000  # validate.class_count refuses far fewer for a head; this bounds the reading
MAX_NAME_CHARS = 1000  # one class name or template
MAX_TEMPLATES = 1000
MAX_STRING = 4096  # any other string of the manifest (model names, notes, paths)
MAX_FILES = 10_000
MAX_GRAPH_DIMS = 8  # rank of a graph input or output
MAX_HEADS = 4096
MAX_OPSET = 1000
_FIX = "re-export the bundle with `rada-export onnx`"


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
class Frames:
    """The uint8 frames input of a fused graph that embeds the preprocessing (exported with ``embed_preprocess``).

    Ranges are (min, opt, max), for TensorRT's optimisation profile and for the runtime's checks;
    ``ranges()`` keys them by the graph's symbolic dimension names.
    """

    channel_order: str = "rgb"  # rgb or bgr: the order the graph expects (fixed at export)
    height: list[int] = field(default_factory=lambda: [1, 1080, 2160])
    width: list[int] = field(default_factory=lambda: [1, 1920, 3840])
    channels: list[int] = field(default_factory=lambda: [1, 3, 4])  # grey, RGB/BGR, RGBA/BGRA
    reducing_gap: int = 2  # the in-graph box reduction (see rada_export/export/frames.py)

    def ranges(self) -> dict[str, tuple[int, int, int]]:
        return {"frame_height": tuple(self.height), "frame_width": tuple(self.width), "frame_channels": tuple(self.channels)}


@dataclass
class GraphEntry:
    """One ONNX graph of the bundle."""

    file: str  # relative to the bundle
    precision: str  # fp32 | fp16 | int8
    inputs: dict[str, list[Any]]  # name -> shape with symbolic dims as strings
    outputs: dict[str, list[Any]]
    input_dtypes: dict[str, str] = field(default_factory=dict)
    external_data: Optional[str] = None  # relative path of the weights file, when used
    notes: str = ""

    @property
    def paths(self) -> list[str]:
        """The graph file and its external weights, where it has them: the files this graph is."""
        return [p for p in (self.file, self.external_data) if p]


@dataclass
class HeadConfig:
    embed_dim: int
    num_heads: int
    temperature: float
    logit_scale: float


@dataclass
class Manifest:
    """The manifest, typed. ``from_dict`` checks every field's type against these annotations (a new
    field needs only its annotation and a default) and then ``check`` the values against each other."""

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
    frames: Optional[Frames] = None  # with embed_preprocess: frames of any size (None: older bundles, model-size RGB)
    pretrained_cfg: Optional[str] = None  # the open_clip tag whose settings (activation, preprocessing) apply
    resolved: dict[str, Any] = field(default_factory=dict)  # what was built: quick_gelu, activations, preprocess
    logit_bias: Optional[float] = None  # SigLIP's learned bias; None for softmax (contrastive) families
    probability: str = "softmax"  # how logits become probabilities: softmax over classes, or sigmoid (SigLIP)
    tokenizer: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    calibration: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "Manifest":
        """A checked manifest; RadaError naming the first bad entry otherwise."""
        if not isinstance(data, dict):
            raise RadaError(f"the bundle's manifest is not a JSON object (got {type(data).__name__})", _FIX)
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise RadaError(
                f"bundle manifest has schema version {version!r}, this rada-export reads {SCHEMA_VERSION}",
                "re-export the bundle with this version of rada-export",
            )
        manifest = _build(cls, data, "manifest")
        manifest.check()
        return manifest

    def check(self) -> None:
        """Values against each other and against sane bounds (no filesystem access)."""
        _in_range("embed_dim", self.embed_dim, 1, MAX_EMBED_DIM)
        _check_preprocess(self.preprocess)
        if self.frames is not None:
            _check_frames(self.frames)
        _positive_finite("logit_scale", self.logit_scale)
        if self.probability not in ("softmax", "sigmoid"):
            _bad(f"probability must be 'softmax' or 'sigmoid', got {self.probability!r}")
        if self.logit_bias is not None and not math.isfinite(self.logit_bias):
            _bad(f"logit_bias must be a finite number, got {self.logit_bias}")
        _check_head(self.head, self.embed_dim)
        _check_names(self.class_names)
        _check_strings(self)
        _in_range("context_length", self.context_length, 1, MAX_CONTEXT_LENGTH)
        _in_range("opset", self.opset, 1, MAX_OPSET)
        _in_range("max_batch", self.max_batch, 1, MAX_BATCH)
        if len(self.files) > MAX_FILES:
            _bad(f"files lists {len(self.files)} files, more than {MAX_FILES}")
        if self.tokenizer:
            tokenizers.check_entry(self.tokenizer, self.context_length)
        tokens = self.graphs[TEXT_ENCODER].inputs.get("token_ids") if TEXT_ENCODER in self.graphs else None
        if tokens and len(tokens) == 2 and isinstance(tokens[1], int) and tokens[1] != self.context_length:
            _bad(f"context_length is {self.context_length} but the text graph takes {tokens[1]} tokens a row")
        for key, entry in self.graphs.items():
            _check_graph(key, entry, self.preprocess)
        for rel, entry in self.named_paths():
            check_relative(rel, entry, "the bundle's manifest")
        for rel, digest in self.files.items():
            check_relative(rel, f"files entry {rel!r}", "the bundle's manifest")
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                _bad(f"files[{rel!r}] is not a sha256 hex digest")
        for rel, entry in self.named_paths():
            if rel not in self.files:
                _bad(f"{entry} ({rel!r}) has no checksum in files, so the bundle cannot vouch for it")

    def named_paths(self) -> list[tuple[str, str]]:
        """(relative path, manifest entry) for every file the manifest points a reader at."""
        named = []
        for key, entry in sorted(self.graphs.items()):
            named.append((entry.file, f"graphs[{key!r}].file"))
            if entry.external_data is not None:
                named.append((entry.external_data, f"graphs[{key!r}].external_data"))
        if self.tokenizer:
            named += [(rel, f"tokenizer.{key}") for key, rel in tokenizers.named_files(self.tokenizer)]
        return named

    def graph_key(self, graph: str, precision: str = "fp32") -> str:
        return layout_graph_key(graph, precision)

    def engine_graph_key(self, graph: str, precision: str = "fp32") -> str:
        """The key TensorRT builds ``precision`` from: for INT8 the Q/DQ graph over FP16 where the
        bundle has one (under strong typing, the Q/DQ graph over FP32 runs its other parts in FP32)."""
        if precision == "int8":
            over_fp16 = f"{graph}.int8_fp16"
            if over_fp16 in self.graphs:
                return over_fp16
        return self.graph_key(graph, precision)

    def graph(self, graph: str, precision: str = "fp32") -> GraphEntry:
        key = self.graph_key(graph, precision)
        if key not in self.graphs:
            have = ", ".join(sorted(self.graphs)) or "none"
            raise RadaError(
                f"the bundle has no {graph} graph in {precision} (it has: {have})",
                "re-export with `rada-export onnx --fp16` for FP16, or `rada-export calibrate` for INT8",
            )
        return self.graphs[key]


# -- typed construction --------------------------------------------------------------------------------


def _bad(problem: str) -> None:
    raise RadaError(f"the bundle's manifest is invalid: {problem}", _FIX)


def _type_name(hint: Any) -> str:
    if dataclasses.is_dataclass(hint):
        return "an object"
    origin = typing.get_origin(hint)
    if origin in (list, dict):
        return "a list" if origin is list else "an object"
    if origin is typing.Union:
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(hint))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(hint, str(hint))


def _convert(value: Any, hint: Any, where: str) -> Any:
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, where)
    if origin is list and isinstance(value, list):
        return [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict and isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _convert(v, args[1], f"{where}[{k!r}]") for k, v in value.items()}
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is str and type(value) is str and len(value) > MAX_STRING and not where.startswith(("manifest.class_names",
                                                                                                  "manifest.templates")):
        _bad(f"{where} is a string of {len(value)} characters, more than {MAX_STRING}")
    if hint in (int, str, bool) and type(value) is hint:
        return value
    _bad(f"{where} should be {_type_name(hint)}, got {json.dumps(value)[:60] if _jsonable(value) else type(value).__name__}")


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        _bad(f"{where} should be {_type_name(cls)}, got {type(data).__name__ if data is not None else 'null'}")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            values[f.name] = _convert(data[f.name], hints[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            _bad(f"{where} has no {f.name!r}")
    return cls(**values)  # unknown keys (written by a newer rada-export) are ignored


# -- value checks --------------------------------------------------------------------------------------


def _in_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        _bad(f"{name} is {value}, outside [{low}, {high}]")


def _positive_finite(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        _bad(f"{name} must be a positive finite number, got {value}")


def _check_preprocess(p: Preprocess) -> None:
    if len(p.size) != 2:
        _bad(f"preprocess.size must be [height, width], got {p.size}")
    for side in p.size:
        _in_range("preprocess.size", side, 1, MAX_IMAGE_SIDE)
    channels = 1 if p.mode == "L" else 3
    for name, values in (("mean", p.mean), ("std", p.std)):
        if len(values) != channels or not all(math.isfinite(v) for v in values):
            _bad(f"preprocess.{name} must be {channels} finite numbers, got {values}")
    if not all(v > 0 for v in p.std):
        _bad(f"preprocess.std must be positive, got {p.std}")
    _in_range("preprocess.fill_color", p.fill_color, 0, 255)


def _check_frames(f: Frames) -> None:
    if f.channel_order not in ("rgb", "bgr"):
        _bad(f"frames.channel_order must be 'rgb' or 'bgr', got {f.channel_order!r}")
    for name, triple, high in (("height", f.height, MAX_FRAME_SIDE), ("width", f.width, MAX_FRAME_SIDE), ("channels", f.channels, 4)):
        if len(triple) != 3 or not 1 <= triple[0] <= triple[1] <= triple[2] <= high:
            _bad(f"frames.{name} must be [min, opt, max] with 1 <= min <= opt <= max <= {high}, got {triple}")
    _in_range("frames.reducing_gap", f.reducing_gap, 1, 64)


def _check_head(h: HeadConfig, embed_dim: int) -> None:
    _in_range("head.num_heads", h.num_heads, 1, MAX_HEADS)
    if h.embed_dim != embed_dim:
        _bad(f"head.embed_dim is {h.embed_dim} but embed_dim is {embed_dim}")
    if h.num_heads < 1 or embed_dim % h.num_heads:
        _bad(f"head.num_heads ({h.num_heads}) must be a positive divisor of embed_dim ({embed_dim})")
    _positive_finite("head.temperature", h.temperature)
    _positive_finite("head.logit_scale", h.logit_scale)


def _check_strings(m: "Manifest") -> None:
    if len(m.class_names) > MAX_CLASSES:
        _bad(f"class_names holds {len(m.class_names)} names, more than {MAX_CLASSES}")
    if len(m.templates) > MAX_TEMPLATES:
        _bad(f"templates holds {len(m.templates)} templates, more than {MAX_TEMPLATES}")
    for what, values in (("class_names", m.class_names), ("templates", m.templates)):
        long = next((v for v in values if len(v) > MAX_NAME_CHARS), None)
        if long is not None:
            _bad(f"{what} holds an entry of {len(long)} characters, more than {MAX_NAME_CHARS}")
    for key, entry in m.graphs.items():
        for side, shapes in (("inputs", entry.inputs), ("outputs", entry.outputs)):
            if len(shapes) > 64 or any(len(dims) > MAX_GRAPH_DIMS for dims in shapes.values()):
                _bad(f"graphs[{key!r}].{side} has more than 64 tensors or a rank over {MAX_GRAPH_DIMS}")


def _check_names(names: list[str]) -> None:
    """The one class-name check (runtimes/class_names.py), as for the exporter and set_classes."""
    problem = class_names_problem(names, minimum=1)
    if problem is not None:
        _bad(f"class_names: {problem[0]}")


def _check_graph(key: str, entry: GraphEntry, pre: Preprocess) -> None:
    name, _, suffix = key.partition(".")
    precision = VARIANT_PRECISION.get(suffix)
    if name not in GRAPH_NAMES or precision is None:
        _bad(f"graphs has an unknown key {key!r} (graphs are {', '.join(GRAPH_NAMES)}, optionally "
             f"{', '.join('.' + v for v in VARIANT_PRECISION if v)})")
    if entry.precision != precision:
        _bad(f"graphs[{key!r}].precision is {entry.precision!r}, its key says {precision}")
    pixels = entry.inputs.get("pixels")
    if pixels is not None:
        # Preprocessing makes 3 x H x W pixels: a graph that takes another fixed size cannot run them.
        if len(pixels) != 4:
            _bad(f"graphs[{key!r}] input 'pixels' has shape {pixels}, expected [batch, 3, height, width]")
        fixed = [(axis, want) for axis, want in ((2, pre.size[0]), (3, pre.size[1])) if isinstance(pixels[axis], int)]
        if any(pixels[axis] != want for axis, want in fixed):
            _bad(f"preprocess.size is {pre.size} but graphs[{key!r}] takes {pixels[2]} x {pixels[3]} pixels")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(bundle: str | os.PathLike, check_graphs: bool = True) -> Manifest:
    """The bundle's manifest, typed and checked, with every path it names confined to the bundle.

    Every command and ``load_bundle`` read bundles through here, so a tampered manifest is refused
    before anything it names is opened. ``check_graphs`` also reads each graph file for the
    external-data locations inside it (what ONNX Runtime and TensorRT would open).
    """
    bundle = Path(bundle)
    path = bundle / MANIFEST_NAME
    check_not_interrupted(bundle)
    if not bundle.is_dir():
        raise RadaError(f"bundle {bundle} is not a folder", "pass the folder written by `rada-export onnx --out`")
    if not path.is_file():
        raise RadaError(f"{bundle} has no {MANIFEST_NAME}", "pass the folder written by `rada-export onnx --out`")
    confine(bundle, MANIFEST_NAME, MANIFEST_NAME)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except OSError as err:
        raise RadaError(f"cannot read {path} ({err.strerror or err})", "make the bundle readable") from None
    manifest = manifest_from_bytes(raw, path)
    check_bundle_paths(bundle, manifest, check_graphs)
    return manifest


MAX_MANIFEST_BYTES = 64 << 20


def manifest_from_bytes(raw: bytes, where: str | os.PathLike = MANIFEST_NAME) -> Manifest:
    """A manifest parsed and checked from its bytes (no filesystem access)."""
    return Manifest.from_dict(parse_json(raw, f"{where}", _FIX, max_bytes=MAX_MANIFEST_BYTES, kind="manifest"))


def check_not_interrupted(bundle: Path) -> None:
    from .swap import interrupted

    if interrupted(bundle):
        raise RadaError(f"bundle {bundle} is missing: a replacement of it was stopped half-way and left the bundle "
                        "beside its path", "rerun the command that was replacing it (`rada-export onnx --force`, "
                        "`calibrate` or `demo`): it puts the bundle back first")


def check_bundle_paths(bundle: str | os.PathLike, manifest: Manifest, check_graphs: bool = True) -> None:
    """Every path the manifest names, and every link in the folder, stays inside the bundle; the
    class names match the text features."""
    bundle = Path(bundle)
    where = f"bundle {bundle}"
    check_links(bundle, where)
    for rel in manifest.files:
        confine(bundle, rel, f"files entry {rel!r}", where)
    for rel, entry in manifest.named_paths():
        confine(bundle, rel, entry, where)
    _check_text_features(bundle, manifest)
    if check_graphs:
        for key, entry in sorted(manifest.graphs.items()):
            graph = bundle / entry.file
            if graph.is_file():  # a missing file is the checksum check's to report
                locations = check_graph_external_data(graph, f"graphs[{key!r}].file ({entry.file})", where)
                check_external_data_listed(manifest, entry.file, locations, where)


def check_external_data_listed(manifest: Manifest, graph_file: str, locations: list[str], where: str) -> None:
    """Every external-data file a graph names is one the manifest checksums: otherwise ONNX Runtime
    would read weights nobody verified."""
    folder = PurePosixPath(graph_file).parent
    for location in locations:
        rel = (folder / location).as_posix()
        if rel not in manifest.files:
            raise RadaError(f"{where}: graph {graph_file} reads external data from {location}, which the manifest does "
                            "not checksum", _FIX)


def _check_text_features(bundle: Path, manifest: Manifest) -> None:
    """The class names against the rows of text_features.npy (its header only)."""
    import numpy as np

    path = bundle / TEXT_FEATURES
    if TEXT_FEATURES not in manifest.files or not path.is_file() or sha256_file(path) != manifest.files[TEXT_FEATURES]:
        return  # a modified file is the checksum check's to name; this one is about a consistent bundle
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, _ = read(fh)
    except (ValueError, OSError, SyntaxError):
        return  # not a .npy file at all: the checksum check names it
    if len(shape) != 2 or shape[0] != len(manifest.class_names) or shape[1] != manifest.embed_dim:
        raise RadaError(
            f"bundle {bundle}: {TEXT_FEATURES} holds {' x '.join(map(str, shape))} features but the manifest has "
            f"{len(manifest.class_names)} class names of {manifest.embed_dim}-d embeddings", _FIX)


def write_manifest(bundle: str | os.PathLike, manifest: Manifest) -> Path:
    """Writes manifest.json atomically."""
    path = Path(bundle) / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def checksum_files(bundle: str | os.PathLike, relative_paths: list[str]) -> dict[str, str]:
    bundle = Path(bundle)
    return {rel: sha256_file(confine(bundle, rel, rel)) for rel in sorted(relative_paths)}


def verify_checksums(bundle: str | os.PathLike, manifest: Manifest, only: list[str] | None = None) -> None:
    """Raises a RadaError naming every missing or altered file (all of them, or those in `only`)."""
    bundle = Path(bundle)
    missing, altered = [], []
    for rel, expected in manifest.files.items():
        if only is not None and rel not in only:
            continue
        path = confine(bundle, rel, f"files entry {rel!r}")
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
