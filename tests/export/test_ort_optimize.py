"""export.ort_optimize: constant folding (exact) and the fused-attention rewrite keep outputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.ort_optimize import MS_DOMAIN, fold_constants, main, optimize_for_ort, verify


def _run(model: onnx.ModelProto, feeds):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"]).run(None, feeds)


def _shape_scaled_model() -> onnx.ModelProto:
    """``x [batch,3,4]`` -> ``x / sqrt(dim 2) + Resize(pe [1,1,2,2] -> [1,1,3,4])[0]``.

    The scale and the resize sizes come from ``Shape(x)`` (dynamic batch), as
    the TorchScript exporter writes ``x.shape[-1] ** -0.5`` and Hiera's
    position embedding.
    """
    pe = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "i2"], ["d"], axis=0),
        helper.make_node("Cast", ["d"], ["d_f"], to=TensorProto.FLOAT),
        helper.make_node("Sqrt", ["d_f"], ["sqrt_d"]),
        helper.make_node("Div", ["x", "sqrt_d"], ["scaled"]),
        helper.make_node("Slice", ["shape", "one", "three"], ["hw"]),
        helper.make_node("Concat", ["n1c1", "hw"], ["sizes"], axis=0),
        helper.make_node("Resize", ["pe", "", "", "sizes"], ["pe_big"], mode="cubic"),
        helper.make_node("Squeeze", ["pe_big", "zero"], ["pe_3d"]),
        helper.make_node("Add", ["scaled", "pe_3d"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array(2, np.int64), "i2"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([3], np.int64), "three"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([1, 1], np.int64), "n1c1"),
             numpy_helper.from_array(pe, "pe")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_fold_constants_removes_shape_only_chains_exactly():
    model = _shape_scaled_model()
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    ref = _run(model, {"x": x})[0]
    rep = fold_constants(model)
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["Div", "Add"]
    assert rep["folded"] == 2 and rep["folded_bytes"] == 4 + 3 * 4 * 4
    for batch in (1, 2, 5):  # still dynamic in batch
        xb = np.resize(x, (batch, 3, 4))
        np.testing.assert_array_equal(_run(model, {"x": xb})[0], _run(_shape_scaled_model(), {"x": xb})[0])
    np.testing.assert_array_equal(_run(model, {"x": x})[0], ref)


def test_fold_constants_leaves_large_constants_and_data_paths():
    model = _shape_scaled_model()
    rep = fold_constants(model, max_bytes=8)
    assert [s["bytes"] for s in rep["skipped_large"]] == [48]  # the resized embedding stays
    assert "Resize" in [n.op_type for n in model.graph.node]
    assert "Sqrt" not in [n.op_type for n in model.graph.node]


def test_image_encoder_position_embedding_folded(plain_engines, tiny_engines, tmp_path):
    out = tmp_path / "ie.onnx"
    rep = optimize_for_ort(plain_engines / "image_encoder.onnx", out, "image_encoder")
    def resized(path):
        return [n.input[0] for n in onnx.load(str(path)).graph.node if n.op_type == "Resize"]

    assert any("pos_embed" in i for i in resized(plain_engines / "image_encoder.onnx"))
    assert resized(out) and not any("pos_embed" in i for i in resized(out))  # FPN upsampling stays
    assert rep["fold"]["folded"] > 0 and rep["nodes_after"] < rep["nodes_before"]
    assert verify(plain_engines / "image_encoder.onnx", out, "image_encoder", {"batch": 2}) < 1e-5
    # export.build folds by default: nothing left to fold in its graph
    again = optimize_for_ort(tiny_engines / "image_encoder.onnx", tmp_path / "ie2.onnx", "image_encoder")
    assert again["fold"]["folded"] == 0


def test_memory_attention_folded_and_equal(plain_engines, tmp_path):
    out = tmp_path / "ma.onnx"
    rep = optimize_for_ort(plain_engines / "memory_attention.onnx", out, "memory_attention")
    # The shape arithmetic of the objects axis stays (it is dynamic); the SDPA scales, casts and
    # identities that depend on nothing go.
    assert rep["nodes_after"] < 0.6 * rep["nodes_before"]
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert not ops & {"Cast", "Div", "Identity", "ConstantOfShape", "Sqrt"}
    for axes in ({"num_mem": 1, "num_ptr": 1}, {"objects": 2, "num_mem": 3, "num_ptr": 5}):
        assert verify(plain_engines / "memory_attention.onnx", out, "memory_attention", axes) < 1e-5


def test_memory_attention_fused_and_equal(tiny_engines, tmp_path):
    """Self-attention becomes MultiHeadAttention as it is; cross-attention too, its padding's key
    bias carried as one more query/key feature (no mask input: ONNX Runtime's CPU kernel then
    attends block-wise). Equal with padded objects (``verify`` pads the first object's last memory)."""
    out = tmp_path / "ma.onnx"
    rep = optimize_for_ort(tiny_engines / "memory_attention.onnx", out, "memory_attention",
                           passes=("fold", "fuse"))
    assert rep["fuse"]["fused_attention"] == 8 and rep["fuse"]["skipped"] == []
    assert sum(a["key_bias"] for a in rep["fuse"]["attention"]) == 4
    m = onnx.load(str(out))
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("MultiHeadAttention") == 8 and "Softmax" not in ops
    assert all(len(n.input) == 3 for n in m.graph.node if n.op_type == "MultiHeadAttention")  # no mask
    assert any(n.domain == MS_DOMAIN for n in m.graph.node)
    for axes in ({"num_mem": 1, "num_ptr": 1}, {"objects": 2, "num_mem": 3, "num_ptr": 5},
                 {"objects": 3, "num_mem": 7, "num_ptr": 16}):
        assert verify(tiny_engines / "memory_attention.onnx", out, "memory_attention", axes) < 1e-5


def test_padding_changes_the_output_and_the_fused_graph_follows(tiny_engines, tmp_path):
    """The key bias is real: the padded object's output differs from the unpadded one, in both graphs alike."""
    from runtime.core.folder import ModelFolder
    from runtime.core.spec import example_feeds

    out = tmp_path / "ma.onnx"
    optimize_for_ort(tiny_engines / "memory_attention.onnx", out, "memory_attention", passes=("fuse",))
    spec = ModelFolder.open(tiny_engines).specs["memory_attention"]
    feeds = example_feeds(spec, {"objects": 2, "num_mem": 3, "num_ptr": 4})
    padded = {k: v.copy() for k, v in feeds.items()}
    padded["mem_valid"][0, -1] = padded["ptr_valid"][0, -1] = 0.0
    outs = {}
    for name, path in (("plain", tiny_engines / "memory_attention.onnx"), ("fused", out)):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outs[name] = [sess.run(None, f)[0] for f in (feeds, padded)]
    for name in outs:
        assert np.abs(outs[name][0][0] - outs[name][1][0]).max() > 1e-3  # object 0 lost an entry
        np.testing.assert_array_equal(outs[name][0][1], outs[name][1][1])  # object 1 untouched
    rel = np.linalg.norm(outs["fused"][1] - outs["plain"][1]) / np.linalg.norm(outs["plain"][1])
    assert rel < 1e-5


def test_image_encoder_attention_fused_and_equal(tiny_engines, tmp_path):
    """Hiera's attention (keys transposed straight to [B,H,d,T]) fuses too, every block."""
    out = tmp_path / "ie.onnx"
    rep = optimize_for_ort(tiny_engines / "image_encoder.onnx", out, "image_encoder", passes=("fuse",))
    assert rep["fuse"]["fused_attention"] == 12 and rep["fuse"]["skipped"] == []  # hiera-tiny: 12 blocks
    assert verify(tiny_engines / "image_encoder.onnx", out, "image_encoder") < 1e-5


def test_build_writes_verified_cpu_fused_files(tiny_engines):
    from runtime.core.folder import ModelFolder

    folder = ModelFolder.open(tiny_engines)
    for stage, n in (("image_encoder", 12), ("memory_attention", 8)):
        st = folder.stage(stage)
        assert st.files["cpu-fused"].file == f"{stage}.cpu-fused.onnx" and st.precision == "fp32"
        m = st.measured["cpu-fused"]
        assert m["passed"] and m["rel_l2"] < 1e-5 and m["fused_attention"] == n
        assert folder.read_verified(st.files["cpu-fused"])
    assert "cpu-fused" not in folder.stage("mask_decoder").files  # its attention is small: left as it is
    assert not list(tiny_engines.glob(".*.part"))


def test_stage_without_attention_unchanged(tiny_engines, tmp_path):
    out = tmp_path / "me.onnx"
    rep = optimize_for_ort(tiny_engines / "memory_encoder.onnx", out, "memory_encoder", passes=("fuse",))
    assert rep["fuse"]["fused_attention"] == 0
    assert verify(tiny_engines / "memory_encoder.onnx", out, "memory_encoder") == 0.0


def test_bad_input(tiny_engines, tmp_path):
    with pytest.raises(ValueError, match="unknown stage"):
        optimize_for_ort(tiny_engines / "memory_attention.onnx", tmp_path / "x.onnx", "nope")
    with pytest.raises(ValueError, match="unknown passes"):
        optimize_for_ort(tiny_engines / "memory_attention.onnx", tmp_path / "x.onnx",
                         "memory_attention", passes=("fold", "nope"))
    with pytest.raises(ValueError, match="missing.onnx does not exist"):
        optimize_for_ort(tmp_path / "missing.onnx", tmp_path / "x.onnx", "memory_attention")
    assert main([str(tmp_path / "missing.onnx"), str(tmp_path / "x.onnx")]) == 2
    assert main([str(tiny_engines / "memory_attention.onnx"), str(tmp_path / "x.onnx"),
                 "--passes", "nope"]) == 2


def test_a_fused_file_that_misses_its_gate_is_not_kept(tiny_engines, tmp_path, monkeypatch):
    import shutil

    import export.ort_optimize as oo
    from runtime.core.folder import ModelFolder

    shutil.copytree(tiny_engines, tmp_path / "f")
    folder = ModelFolder.read(tmp_path / "f")
    del folder.manifest.stages["memory_attention"].files["cpu-fused"]
    monkeypatch.setattr(oo, "verify", lambda *a, **k: 3e-3)  # as a wrong rewrite would measure
    logs = []
    assert oo.export_cpu_fused(folder, "memory_attention", [{"objects": 1}], log=logs.append) is None
    assert "FAILED" in logs[-1] and "cpu-fused" not in folder.manifest.stages["memory_attention"].files
    assert not (tmp_path / "f" / "memory_attention.cpu-fused.onnx").exists()
    assert not list((tmp_path / "f").glob(".*.part"))
