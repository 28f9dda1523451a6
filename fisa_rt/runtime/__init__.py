"""Inference runtime: the same pre-processing, vocabulary encoding and post-processing around any
backend (PyTorch checkpoint, ONNX Runtime, TensorRT). Importable without PyTorch for the ONNX/TensorRT
paths."""
