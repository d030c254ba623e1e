"""The device runtime: numpy, onnxruntime and tensorrt only; never torch, open_clip or export code.

    from rada_export.runtimes import load_bundle, TTAConfig
    rt = load_bundle("bundle/", tta=TTAConfig(mode="continual"))
    p = rt.predict("cat.jpg")
    print(p.label, p.score, rt.stats)
"""

from __future__ import annotations

_LAZY = {
    "load_bundle": ("rada_export.runtimes.runtime", "load_bundle"),
    "Runtime": ("rada_export.runtimes.runtime", "Runtime"),
    "Prediction": ("rada_export.runtimes.prediction", "Prediction"),
    "ImageResult": ("rada_export.runtimes.prediction", "ImageResult"),
    "RuntimeStats": ("rada_export.runtimes.runtime_stats", "RuntimeStats"),
    "Head": ("rada_export.runtimes.head", "Head"),
    "TTAConfig": ("rada_export.runtimes.tta", "TTAConfig"),
    "FrameStream": ("rada_export.runtimes.stream", "FrameStream"),
    "StreamFrame": ("rada_export.runtimes.stream", "StreamFrame"),
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rada_export.runtimes' has no attribute {name!r}")
