"""Graph edits around ``quantize_dynamic`` for fast dynamic-INT8 attention on the CPU.

``onnxruntime.quantization.quantize_dynamic`` treats a MatMul whose both
inputs are activations (the attention products Q.K^T and A.V) like any other:
both operands go through ``DynamicQuantizeLinear`` (uint8 with a zero
point) into ``MatMulInteger``. uint8 x uint8 runs MLAS's slower U8U8 kernel
and ORT cannot fuse it into ``DynamicQuantizeMatMul``.
:func:`tune_activation_products` quantizes the right operand symmetrically
to int8 instead (one scale per call, ``max|B| / limit``, no zero point),
which takes the U8S8 kernel (VNNI where the CPU has it) and ORT's fusion.
Measurements (and the variant tried and dropped): ``bench/reports/cpu-int8-notes.md``.

:func:`constants_to_initializers` runs first: weights the exporter left as
``Constant`` nodes (memory attention's folded value/output projection)
would otherwise be quantized like activations, per tensor and on every call.
"""

from __future__ import annotations

from typing import Dict, List

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Move float ``Constant`` tensors of rank >= 2 to initializers (in place); returns how many."""
    g = model.graph
    keep, moved = [], 0
    for n in g.node:
        attr = n.attribute[0] if n.op_type == "Constant" and len(n.attribute) == 1 else None
        if attr is not None and attr.name == "value" and attr.t.data_type == TensorProto.FLOAT \
                and len(attr.t.dims) >= 2:
            g.initializer.append(numpy_helper.from_array(numpy_helper.to_array(attr.t), n.output[0]))
            moved += 1
        else:
            keep.append(n)
    del g.node[:]
    g.node.extend(keep)
    return moved


def _symmetric_int8(x: str, q: str, scale: str, limit: str, eps: str, prefix: str) -> List[onnx.NodeProto]:
    """Nodes computing ``q = int8(round(x / scale))`` with ``scale = max(max|x| / limit, eps)``."""
    return [
        helper.make_node("Abs", [x], [f"{prefix}/abs"], name=f"{prefix}/Abs"),
        helper.make_node("ReduceMax", [f"{prefix}/abs"], [f"{prefix}/max"], keepdims=0,
                         name=f"{prefix}/ReduceMax"),
        helper.make_node("Div", [f"{prefix}/max", limit], [f"{prefix}/scale0"], name=f"{prefix}/Div0"),
        helper.make_node("Max", [f"{prefix}/scale0", eps], [scale], name=f"{prefix}/Max"),
        helper.make_node("Div", [x, scale], [f"{prefix}/scaled"], name=f"{prefix}/Div"),
        helper.make_node("Round", [f"{prefix}/scaled"], [f"{prefix}/rounded"], name=f"{prefix}/Round"),
        helper.make_node("Cast", [f"{prefix}/rounded"], [q], to=TensorProto.INT8, name=f"{prefix}/Cast"),
    ]


def tune_activation_products(model: onnx.ModelProto, reduce_range: bool) -> int:
    """Give ``quantize_dynamic``'s activation x activation products a symmetric int8 right operand.

    In place, on the quantized ``model``: each ``DynamicQuantizeLinear`` that
    feeds only right operands of ``MatMulInteger`` nodes is replaced by
    ``int8(round(x / s))``, ``s = max|x| / limit`` computed on each call, and
    those nodes lose their right zero point. ``limit`` is 63 with
    ``reduce_range`` (x86 without VNNI: uint8 x int8 pairs then fit int16, see
    runtime/backends/cpu_features.py), else 127. Returns how many products
    were changed.
    """
    g = model.graph
    inits = {i.name for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers: Dict[str, List[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    limit, eps = "dyn_int8/limit", "dyn_int8/eps"
    g.initializer.extend([
        numpy_helper.from_array(np.array(63.0 if reduce_range else 127.0, np.float32), limit),
        numpy_helper.from_array(np.array(1e-12, np.float32), eps)])

    replaced: Dict[str, List[onnx.NodeProto]] = {}  # DynamicQuantizeLinear name -> its replacement
    changed = 0
    for n in list(g.node):
        if n.op_type != "MatMulInteger" or n.input[1] in inits:
            continue
        dq = producer.get(n.input[1])
        if dq is None or dq.op_type != "DynamicQuantizeLinear":
            continue
        q, scale, zero_point = dq.output
        users = [(c, k) for o in (q, zero_point) for c in consumers.get(o, [])
                 for k, i in enumerate(c.input) if i == o]
        if any(c.op_type != "MatMulInteger" or k not in (1, 3) for c, k in users):
            continue  # the same quantized tensor also feeds a left operand: keep uint8
        if dq.name not in replaced:
            replaced[dq.name] = _symmetric_int8(dq.input[0], q, scale, limit, eps, f"{dq.name}/symmetric")
        del n.input[3:]  # no zero point for the symmetric int8 operand
        changed += 1

    nodes: List[onnx.NodeProto] = []
    for n in g.node:
        nodes.extend(replaced.get(n.name, [n]))
    del g.node[:]
    g.node.extend(nodes)
    return changed
