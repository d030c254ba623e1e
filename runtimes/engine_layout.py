"""Where a bundle's TensorRT engines live, the JSON description beside each, and whether one fits.

An engine is tied to the TensorRT version and the GPU it was built with, so each engine has a JSON
beside it (written by ``rada-export trt``) that records both, and the sha256 of the ONNX file it
came from. Pure file and dictionary work: nothing here loads TensorRT or CUDA.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from rada_export.errors import RadaError

ENGINES_DIR = "engines"
# The device's own list of the engines `rada-export trt` built on it (one sha256 a line), outside every bundle.
TRUSTED_ENGINES_ENV = "RADA_EXPORT_TRUSTED_ENGINES"  # its path, when not the default
TRUSTED_ENGINES_MAX_BYTES = 4 * 2**20
META_MAX_BYTES = 2**20  # an engine's JSON is a few KB
ENGINE_SUFFIX = ".engine"
META_FORMAT = 1
REQUIRED_META = ("tensorrt_version", "gpu_name", "compute_capability", "graph", "precision")


@dataclass(frozen=True)
class EngineEnvironment:
    """What an engine is tied to: the TensorRT version and the GPU (name and compute capability)."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.7"

    @property
    def major(self) -> int:
        return int(self.compute_capability.split(".")[0])

    @property
    def minor(self) -> int:
        return int(self.compute_capability.split(".")[1])

    @property
    def dir_name(self) -> str:
        return engine_dir_name(self.gpu_name, self.major, self.minor, self.tensorrt_version)


def engine_dir_name(gpu_name: str, major: int, minor: int, trt_version: str) -> str:
    """'NVIDIA GeForce RTX 4090', 8, 9, '10.3.0' -> 'nvidia-geforce-rtx-4090-sm89-trt10.3.0'."""
    slug = re.sub(r"[^a-z0-9]+", "-", str(gpu_name).lower()).strip("-") or "gpu"
    version = re.sub(r"[^0-9A-Za-z.]+", "-", str(trt_version)).strip("-.") or "unknown"
    return f"{slug}-sm{int(major)}{int(minor)}-trt{version}"


def engine_file_name(graph: str, precision: str) -> str:
    return f"{graph}.{precision}{ENGINE_SUFFIX}"


def meta_path(engine_path: str | os.PathLike) -> Path:
    """The JSON beside an engine: model.fp16.engine -> model.fp16.json."""
    path = Path(engine_path)
    stem = path.name[: -len(ENGINE_SUFFIX)] if path.name.endswith(ENGINE_SUFFIX) else path.stem
    return path.with_name(stem + ".json")


def engine_path(bundle: str | os.PathLike, graph: str, precision: str, env: EngineEnvironment) -> Path:
    return Path(bundle) / ENGINES_DIR / env.dir_name / engine_file_name(graph, precision)


def read_engine_meta(engine_path: str | os.PathLike) -> dict[str, Any]:
    path = meta_path(engine_path)
    if not path.is_file():
        raise RadaError(
            f"engine {engine_path} has no {path.name} beside it (the TensorRT version and GPU it was built for)",
            "rebuild it with `rada-export trt`, which writes both files",
        )
    try:
        with open(path, "rb") as fh:
            raw = fh.read(META_MAX_BYTES + 1)
        if len(raw) > META_MAX_BYTES:
            raise ValueError(f"larger than {META_MAX_BYTES} bytes")
        meta = json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        # ValueError: JSON errors, and integers past Python's digit limit; RecursionError: deep nesting.
        # The description sits in a bundle, which is untrusted input.
        raise RadaError(f"{path} is not a readable engine description ({type(err).__name__}: {str(err)[:160]})",
                        "rebuild the engine with `rada-export trt`") from None
    return validate_meta(meta, path)


def validate_meta(meta: Any, where: str | os.PathLike = "engine description") -> dict[str, Any]:
    if not isinstance(meta, dict):
        raise RadaError(f"{where} is not an engine description (a JSON object expected)", "rebuild the engine with `rada-export trt`")
    absent = [key for key in REQUIRED_META if not meta.get(key)]
    if absent:
        raise RadaError(f"{where} lacks {', '.join(absent)}", "rebuild the engine with `rada-export trt`")
    return meta


def check_engine_compat(meta: Mapping[str, Any], current: EngineEnvironment, engine_path: str | os.PathLike | None = None) -> None:
    """Raises unless the engine was built with this TensorRT version on this GPU (name and compute capability)."""
    meta = validate_meta(dict(meta), engine_path or "engine description")
    built = f"TensorRT {meta['tensorrt_version']} on {meta['gpu_name']} (compute capability {meta['compute_capability']})"
    here = f"TensorRT {current.tensorrt_version} on {current.gpu_name} (compute capability {current.compute_capability})"
    differs = []
    if str(meta["tensorrt_version"]) != current.tensorrt_version:
        differs.append("TensorRT version")
    if str(meta["compute_capability"]) != current.compute_capability:
        differs.append("compute capability")
    if str(meta["gpu_name"]) != current.gpu_name:
        differs.append("GPU")
    if differs:
        name = Path(engine_path).name if engine_path else "the engine"
        graph, precision = meta.get("graph", "model"), meta.get("precision", "fp16")
        raise RadaError(
            f"{name} was built with {built}, but this device has {here} (different {', '.join(differs)}); "
            "TensorRT engines only run where they were built",
            f"rebuild it on this device: `rada-export trt --bundle <bundle> --graph {graph} --precision {precision}`",
        )


def check_engine_matches_bundle(meta: Mapping[str, Any], manifest: Any) -> None:
    """Raises unless the engine was built from the ONNX file this bundle's manifest lists (same sha256)."""
    onnx_file, built_from = meta.get("onnx_file"), meta.get("onnx_sha256")
    files = getattr(manifest, "files", {}) or {}
    if not onnx_file or not built_from:
        raise RadaError("the engine description does not name the ONNX file it was built from", "rebuild the engine with `rada-export trt`")
    expected = files.get(onnx_file)
    if expected is None:
        raise RadaError(f"the engine was built from {onnx_file}, which this bundle does not list", "rebuild the engine from this bundle")
    if expected != built_from:
        raise RadaError(
            f"the engine was built from another version of {onnx_file} (sha256 {built_from[:12]}..., the bundle has {expected[:12]}...)",
            "rebuild the engine from this bundle: `rada-export trt --bundle <bundle> "
            f"--graph {meta.get('graph', 'model')} --precision {meta.get('precision', 'fp16')}`",
        )


def list_engines(bundle: str | os.PathLike) -> list[tuple[Path, dict[str, Any] | None]]:
    """Every engine in the bundle, with its description (None when that is missing or unreadable)."""
    root = Path(bundle) / ENGINES_DIR
    found = []
    for path in sorted(root.glob(f"*/*{ENGINE_SUFFIX}")) if root.is_dir() else []:
        try:
            meta = read_engine_meta(path)
        except RadaError:
            meta = None
        found.append((path, meta))
    return found


def scan_engines(bundle: str | os.PathLike) -> dict[str, dict[str, Any] | None]:
    """``{path relative to the bundle: description or None}`` for every engine under BUNDLE/engines/<dir>/.

    The folder is untrusted like the rest of a bundle: entries that resolve outside it (symlinks)
    are left out, and unreadable descriptions are None.
    """
    bundle = Path(bundle)
    root = bundle / ENGINES_DIR
    if not root.is_dir():
        return {}
    inside = root.resolve()
    found: dict[str, dict[str, Any] | None] = {}
    for path, meta in list_engines(bundle):
        try:
            resolved = path.resolve()
            meta_resolved = meta_path(path).resolve()
        except OSError:
            continue
        if not (resolved.is_relative_to(inside) and meta_resolved.is_relative_to(inside)):
            continue
        found[path.relative_to(bundle).as_posix()] = meta
    return found


# Trust. A serialized engine is executable code: "Deserializing an engine from an untrusted source is
# equivalent to running untrusted native code on the GPU and host ... Deserialize only engines you built
# yourself, or engines received over a trusted, authenticated channel" (TensorRT, "Security Considerations",
# docs.nvidia.com/deeplearning/tensorrt/latest/reference/security.html). A bundle is untrusted input, and an
# engine's JSON travels in the same bundle, so the sha256 it records proves nothing about where the engine
# came from. The device therefore keeps its own list of the engines it built, and the runtime deserializes
# only those (or one its caller vouches for).


def trusted_engines_file() -> Path:
    """``$RADA_EXPORT_TRUSTED_ENGINES``, else ``$XDG_STATE_HOME/rada-export/trusted-engines.txt`` (~/.local/state)."""
    override = os.environ.get(TRUSTED_ENGINES_ENV)
    if override:
        return Path(override)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "rada-export" / "trusted-engines.txt"


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def trusted_engines(path: str | os.PathLike | None = None) -> frozenset[str]:
    """The sha256 of every engine this device built (empty when the list does not exist yet)."""
    path = Path(path) if path is not None else trusted_engines_file()
    try:
        with open(path, "rb") as fh:
            text = fh.read(TRUSTED_ENGINES_MAX_BYTES).decode("ascii", errors="replace")
    except FileNotFoundError:
        return frozenset()
    except OSError as err:
        raise RadaError(f"cannot read the list of engines built on this device, {path} ({err.strerror or err})",
                        f"make it readable, or point {TRUSTED_ENGINES_ENV} at a readable file") from None
    return frozenset(line.strip() for line in text.splitlines() if _is_sha256(line.strip()))


def is_trusted_engine(sha256: str | None) -> bool:
    """Whether an engine with this sha256 was built on this device (or registered by its owner)."""
    return bool(sha256) and str(sha256) in trusted_engines()


def trust_engine(sha256: str, path: str | os.PathLike | None = None) -> Path:
    """Adds an engine's sha256 to the device's list (atomically, under a lock); returns the list's path."""
    sha256 = str(sha256).lower()
    if not _is_sha256(sha256):
        raise RadaError(f"{sha256!r} is not a sha256", "pass the 64 hex digits of the engine file's sha256")
    path = Path(path) if path is not None else trusted_engines_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "a") as lock:
            try:
                import fcntl

                fcntl.flock(lock, fcntl.LOCK_EX)  # two builds at once must not drop each other's line
            except ImportError:  # not POSIX: no lock, the rename below still keeps the file whole
                pass
            known = trusted_engines(path)
            if sha256 not in known:
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
                with os.fdopen(fd, "w", encoding="ascii") as fh:
                    fh.write("".join(f"{line}\n" for line in sorted(known | {sha256})))
                os.replace(tmp, path)
    except OSError as err:
        raise RadaError(f"cannot record the engine in {path} ({err.strerror or err})",
                        f"make {path.parent} writable, or point {TRUSTED_ENGINES_ENV} at a writable file") from None
    return path


def trust_engine_file(engine: str | os.PathLike) -> tuple[str, Path]:
    """Registers an engine file its owner vouches for (built by them on an identical device): (sha256, list path).

    The file must match the sha256 its JSON records, so that the JSON describes what is registered.
    """
    engine = Path(engine)
    meta = read_engine_meta(engine)
    digest = hashlib.sha256(engine.read_bytes()).hexdigest()
    if meta.get("engine_sha256") != digest:
        raise RadaError(f"{engine} does not match the sha256 its {meta_path(engine).name} records",
                        "register only an engine you built, with the JSON written beside it by `rada-export trt`")
    return digest, trust_engine(digest)


UNTRUSTED_FIX = ("rebuild it on this device with `rada-export trt` (which records what it builds); an engine you built "
                 "yourself on an identical device and copied over can be registered with `rada-export trt --trust-engine ENGINE`")
