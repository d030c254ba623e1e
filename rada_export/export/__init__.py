"""ONNX export of the encoders, the head and the fused model."""
