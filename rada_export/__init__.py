"""rada-export: CLIP + RAda heads to ONNX, FP16/INT8 and TensorRT, with a torch-free runtime.

Importing this package does not import torch: the host-side API (which needs the ``export``
extra) loads on first use, so a device with only the base install can import the runtime.
"""

from __future__ import annotations

from ._version import __version__
from .errors import RadaError, VerificationError

_LAZY = {
    "RAdaHead": ("rada_export.head", "RAdaHead"),
    "fit_head": ("rada_export.train", "fit_head"),
    "load_clip": ("rada_export.clip", "load_clip"),
    "load_head": ("rada_export.checkpoint", "load_head"),
    "save_head": ("rada_export.checkpoint", "save_head"),
}

__all__ = ["__version__", "RadaError", "VerificationError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rada_export' has no attribute {name!r}")
