"""Reads the head of a bundle: its weights, its class names and text features, and its settings."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from rada_export.errors import RadaError

from .manifest import HeadConfig, read_manifest, verify_checksums

HEAD_FILE = "head.safetensors"
TEXT_FEATURES_FILE = "text_features.npy"


@dataclass(frozen=True)
class HeadBundle:
    """What a bundle holds for its head; the arrays are not checked beyond being readable."""

    weights: dict[str, np.ndarray]  # nn.Linear names (as saved), text_features dropped
    text_features: np.ndarray  # K x D
    class_names: tuple[str, ...]  # K
    config: HeadConfig


def read_head_bundle(path: Union[str, os.PathLike]) -> HeadBundle:
    """Reads ``head.safetensors``, ``text_features.npy`` and the manifest's head settings and class names.

    The two files are checked against the manifest's checksums when it lists them.
    """
    from safetensors.numpy import load_file

    bundle = Path(path)
    manifest = read_manifest(bundle)
    listed = [rel for rel in (HEAD_FILE, TEXT_FEATURES_FILE) if rel in manifest.files]
    if listed:
        verify_checksums(bundle, manifest, only=listed)
    for rel in (HEAD_FILE, TEXT_FEATURES_FILE):
        if not (bundle / rel).is_file():
            raise RadaError(f"bundle {bundle} has no {rel}", "re-export the bundle with its head")
    try:
        weights = load_file(str(bundle / HEAD_FILE))
    except Exception as err:
        raise RadaError(
            f"{bundle / HEAD_FILE} is not a readable safetensors file ({err})", "re-export the bundle"
        ) from err
    # The head checkpoint may carry its own copy of the text features; the .npy file rules.
    weights.pop("text_features", None)
    try:
        text = np.load(bundle / TEXT_FEATURES_FILE, allow_pickle=False)
    except Exception as err:
        raise RadaError(
            f"{bundle / TEXT_FEATURES_FILE} is not a readable .npy file ({err})", "re-export the bundle"
        ) from err
    return HeadBundle(weights, text, tuple(manifest.class_names), manifest.head)
