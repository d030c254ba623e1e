"""Reads the head of a bundle: its weights, its class names and text features, and its settings."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from rada_export.errors import RadaError

from .bundle.layout import HEAD_FILE, TEXT_FEATURES
from .bundle.verified import VerifiedBundle
from .manifest import HeadConfig

TEXT_FEATURES_FILE = TEXT_FEATURES
__all__ = ["HEAD_FILE", "TEXT_FEATURES_FILE", "HeadBundle", "read_head_bundle"]


@dataclass(frozen=True)
class HeadBundle:
    """What a bundle holds for its head; the arrays are not checked beyond being readable."""

    weights: dict[str, np.ndarray]  # nn.Linear names (as saved), text_features dropped
    text_features: np.ndarray  # K x D
    class_names: tuple[str, ...]  # K
    config: HeadConfig


def read_head_bundle(path: Union[str, os.PathLike, VerifiedBundle]) -> HeadBundle:
    """Reads ``head.safetensors``, ``text_features.npy`` and the manifest's head settings and class names.

    Both files are parsed from their verified bytes (runtimes/bundle/verified.py): ``path`` may be the
    VerifiedBundle a runtime holds; a folder is opened and pinned here.
    """
    from safetensors.numpy import load

    bundle = path if isinstance(path, VerifiedBundle) else VerifiedBundle.open(Path(path), check_graphs=False)
    manifest = bundle.manifest
    for rel in (HEAD_FILE, TEXT_FEATURES_FILE):
        if rel not in manifest.files:
            raise RadaError(f"bundle {bundle.path} lists no {rel} in its manifest", "re-export the bundle with its head")
    head_bytes, text_bytes = bundle.read(HEAD_FILE), bundle.read(TEXT_FEATURES_FILE)
    try:
        weights = load(head_bytes)
    except Exception as err:
        raise RadaError(f"{bundle.path / HEAD_FILE} is not a readable safetensors file ({str(err)[:200]})",
                        "re-export the bundle") from None
    # The head checkpoint may carry its own copy of the text features; the .npy file rules.
    weights.pop("text_features", None)
    try:
        text = np.load(io.BytesIO(text_bytes), allow_pickle=False)
    except Exception as err:
        raise RadaError(f"{bundle.path / TEXT_FEATURES_FILE} is not a readable .npy file ({str(err)[:200]})",
                        "re-export the bundle") from None
    return HeadBundle(weights, text, tuple(manifest.class_names), manifest.head)
