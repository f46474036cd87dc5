"""export.ort_optimize: the fused-attention rewrite keeps outputs within rel L2 1e-5."""

from __future__ import annotations

import onnx
import pytest

from export.ort_optimize import MS_DOMAIN, main, optimize_for_ort, verify


def test_memory_attention_fused_and_equal(tiny_engines, tmp_path):
    out = tmp_path / "ma.onnx"
    rep = optimize_for_ort(tiny_engines / "memory_attention.onnx", out, "memory_attention")
    assert rep["fused_attention"] == 8  # 4 layers x (self + cross)
    m = onnx.load(str(out))
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("MultiHeadAttention") == 8 and "Softmax" not in ops
    assert any(n.domain == MS_DOMAIN for n in m.graph.node)
    for axes in ({"num_mem": 1, "num_ptr": 1}, {"num_mem": 3, "num_ptr": 5}):
        assert verify(tiny_engines / "memory_attention.onnx", out, "memory_attention", axes) < 1e-5


def test_stage_without_attention_unchanged(tiny_engines, tmp_path):
    out = tmp_path / "me.onnx"
    rep = optimize_for_ort(tiny_engines / "memory_encoder.onnx", out, "memory_encoder")
    assert rep["fused_attention"] == 0
    assert verify(tiny_engines / "memory_encoder.onnx", out, "memory_encoder") == 0.0


def test_bad_input(tiny_engines, tmp_path):
    with pytest.raises(ValueError, match="unknown stage"):
        optimize_for_ort(tiny_engines / "memory_attention.onnx", tmp_path / "x.onnx", "nope")
    with pytest.raises(FileNotFoundError):
        optimize_for_ort(tmp_path / "missing.onnx", tmp_path / "x.onnx", "memory_attention")
    assert main([str(tmp_path / "missing.onnx"), str(tmp_path / "x.onnx")]) == 2
