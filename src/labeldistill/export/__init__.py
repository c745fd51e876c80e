"""Deployment of the camera student (ONNX)."""
