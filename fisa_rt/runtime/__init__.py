"""Inference runtime: the same pre-processing, vocabulary encoding and post-processing around any
backend (PyTorch checkpoint, ONNX Runtime, TensorRT). It needs PyTorch on every backend: resize, pad and
post-processing run as torch ops on the backend's device, and the TensorRT backend's buffers and stream are
torch's (docs/design.md, "Layout")."""
