"""calib/dynamic_graph.py: the graph edits around quantize_dynamic, on small attention graphs."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from calib.dynamic import quantize_dynamic_stage
from calib.dynamic_graph import constants_to_initializers, tune_activation_products
from runtime.core.backends.cpu_features import saturates_full_range

N, D = 48, 32


def _attention_model(extra_left_use=False):
    """x [N,D] -> q = x Wq, k = x Wk, v = x Wv; softmax(q k^T) v (+ k^T-as-left product)."""
    rng = np.random.default_rng(0)
    w = {n: numpy_helper.from_array(rng.standard_normal((D, D)).astype(np.float32) / D ** 0.5, n)
         for n in ("wq", "wk", "wv")}
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"]),
             helper.make_node("MatMul", ["x", "wk"], ["k"]),
             helper.make_node("MatMul", ["x", "wv"], ["v"]),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[1, 0]),
             helper.make_node("MatMul", ["q", "kt"], ["s"]),
             helper.make_node("Softmax", ["s"], ["a"], axis=-1),
             helper.make_node("MatMul", ["a", "v"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [N, D])]
    if extra_left_use:  # kt also as a *left* operand: its quantized form must stay uint8
        nodes.append(helper.make_node("MatMul", ["kt", "q"], ["z"]))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [D, D]))
    g = helper.make_graph(nodes, "attn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N, D])],
                          outputs, list(w.values()))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _run(path_or_model, x):
    data = path_or_model if isinstance(path_or_model, str) else path_or_model.SerializeToString()
    s = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})


def _quantize_plain(src, dst, reduce_range):
    """quantize_dynamic as calib.dynamic calls it, without the graph edits."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul"], reduce_range=reduce_range,
                     extra_options={"MatMulConstBOnly": False})


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_constants_become_initializers_and_the_graph_computes_the_same():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((D, D)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w)),
         helper.make_node("Constant", [], ["two"], value=numpy_helper.from_array(np.array(2.0, np.float32))),
         helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Mul", ["xw", "two"], ["y"])],
        "c", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N, D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [N, D])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((N, D)).astype(np.float32)
    before = _run(m, x)[0]
    assert constants_to_initializers(m) == 1  # the matrix; the scalar stays a Constant
    assert [i.name for i in m.graph.initializer] == ["w"]
    assert [n.op_type for n in m.graph.node] == ["Constant", "MatMul", "Mul"]
    np.testing.assert_array_equal(_run(m, x)[0], before)


@pytest.mark.parametrize("reduce_range, limit", [(True, 63.0), (False, 127.0)])
def test_attention_products_get_a_symmetric_int8_right_operand(tmp_path, reduce_range, limit):
    src, dst = tmp_path / "a.onnx", tmp_path / "a.cpu-int8.onnx"
    onnx.save(_attention_model(), src)
    quantize_dynamic_stage(src, dst, reduce_range=reduce_range)
    m = onnx.load(dst)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    act = [n for n in m.graph.node if n.op_type == "MatMulInteger" and n.input[1] not in inits]
    assert len(act) == 2  # q.k^T and a.v
    for n in act:
        assert len(n.input) == 3  # no right zero point
        assert producer[n.input[1]].op_type == "Cast"  # int8(round(x / s)), not DynamicQuantizeLinear
    assert float(inits["dyn_int8/limit"]) == limit
    if saturates_full_range() and not reduce_range:
        return  # 8-bit operands overflow this CPU's INT8 GEMM: numbers are meaningless here
    # as accurate as quantize_dynamic's own uint8 x uint8 products
    plain = tmp_path / "plain.onnx"
    _quantize_plain(src, plain, reduce_range)
    x = np.random.default_rng(2).standard_normal((N, D)).astype(np.float32)
    ref = _run(str(src), x)[0]
    assert _rel(_run(str(dst), x)[0], ref) < 1.5 * _rel(_run(str(plain), x)[0], ref) + 0.01


def test_a_tensor_that_is_also_a_left_operand_stays_uint8(tmp_path):
    src, dst = tmp_path / "a.onnx", tmp_path / "a.cpu-int8.onnx"
    onnx.save(_attention_model(extra_left_use=True), src)
    _quantize_plain(src, dst, reduce_range=True)
    m = onnx.load(dst)
    assert tune_activation_products(m, reduce_range=True) == 1  # a.v only; kt feeds a left operand too
    x = np.random.default_rng(3).standard_normal((N, D)).astype(np.float32)
    ref, plain = _run(str(src), x), _run(str(dst), x)
    for got, want, untuned in zip(_run(m, x), ref, plain):
        assert _rel(got, want) < 1.5 * _rel(untuned, want) + 0.01
