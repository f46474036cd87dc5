"""Conformance cases run against the real TensorRT bindings of one version (started by tests/export/test_tensorrt_api.py)."""
