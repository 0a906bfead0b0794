"""Sparse ONNX export and its onnxruntime verification."""
