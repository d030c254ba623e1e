"""The device runtime: numpy, onnxruntime and tensorrt only; never torch, open_clip or export code."""
