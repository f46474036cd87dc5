"""FP16 numerics without TensorRT: an FP16 ONNX with the engines' FP32 pins, run in ORT CPU.

TensorRT FP16 engines from ``export.trt_build`` pin normalisation to FP32:
``LayerNormalization`` nodes, float reductions, ``Pow``/``Sqrt`` and the
elementwise nodes fed directly by a reduction or square root (the decomposed
LayerNorm2d of the memory encoder / mask decoder); softmax optionally
(``keep_softmax_fp32``, off by default as in the engines). Everything else
runs in FP16.

:func:`to_fp16_onnx` applies the same policy to an ONNX graph with
``onnxruntime.transformers.float16`` (weights and activations FP16, Cast nodes
at the pinned islands, graph inputs/outputs kept FP32). ONNX Runtime's CPU
provider has FP16 kernels for only part of the operator set; where a session
cannot be created, :func:`fp16_runner` falls back to *emulation*
(:func:`emulate_fp16_onnx`): FP32 kernels, but every non-pinned node's float
outputs and every float weight rounded to FP16 (Cast to FP16 and back). That
measures FP16 storage/rounding error, not FP16 accumulation inside kernels
(TensorRT accumulates GEMMs in FP32 anyway), nor overflow inside a single
kernel. The runner's ``fp16_mode`` says which of the two was measured.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Set

import numpy as np

NORM_OPS = ("LayerNormalization", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceMax",
            "ReduceMin", "ReduceL2", "ReduceProd", "Pow", "Sqrt")
FOLLOW_OPS = ("Sub", "Div", "Add", "Mul")  # pinned when fed by a pinned reduce/sqrt


def fp32_pinned_nodes(model, keep_softmax_fp32: bool = False) -> List[str]:
    """Names of the nodes the FP16 policy keeps in FP32 (mirrors trt_build.mark_fp32_layers)."""
    keep_ops = set(NORM_OPS) | ({"Softmax"} if keep_softmax_fp32 else set())
    pinned: List[str] = []
    seeds: Set[str] = set()
    for n in model.graph.node:
        if n.op_type in keep_ops:
            pinned.append(n.name)
            if n.op_type.startswith("Reduce") or n.op_type == "Sqrt":
                seeds.update(n.output)
        elif n.op_type in FOLLOW_OPS and seeds.intersection(n.input):
            pinned.append(n.name)
    return pinned


def _named(model):
    for i, n in enumerate(model.graph.node):
        if not n.name:
            n.name = f"{n.op_type}_{i}"
    return model


def _short_names(model):
    """Rename internal tensors and nodes to short unique names (the converter truncates long ones)."""
    g = model.graph
    keep = {v.name for v in list(g.input) + list(g.output)}
    mapping = {}
    for i, init in enumerate(g.initializer):
        if init.name not in keep:
            mapping[init.name] = f"w{i}"
            init.name = mapping[init.name]
    for i, n in enumerate(g.node):
        n.name = f"n{i}_{n.op_type}"
        for k, o in enumerate(n.output):
            if o and o not in keep:
                mapping[o] = f"t{i}_{k}"
                n.output[k] = mapping[o]
    for n in g.node:
        n.input[:] = [mapping.get(x, x) for x in n.input]
        for a in n.attribute:
            if a.g and a.g.node:  # subgraphs (If) use outer names
                for sn in a.g.node:
                    sn.input[:] = [mapping.get(x, x) for x in sn.input]
    del g.value_info[:]
    return model


def to_fp16_onnx(src: str | Path, dst: str | Path, keep_softmax_fp32: bool = False) -> Path:
    """Write a real FP16 ONNX (FP32 I/O, pinned nodes FP32) of ``src`` to ``dst``."""
    import onnx
    from onnxruntime.transformers import float16

    from runtime.core.fileio import atomic_path

    model = _short_names(onnx.load(os.fspath(src)))
    pinned = fp32_pinned_nodes(model, keep_softmax_fp32)
    fp16 = float16.convert_float_to_float16(
        model, keep_io_types=True, node_block_list=pinned,
        op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST), disable_shape_infer=False)
    seen: Set[str] = set()
    for i, n in enumerate(fp16.graph.node):  # the converter can repeat (truncated) names
        if n.name in seen:
            n.name = f"{n.name}__{i}"
        seen.add(n.name)
    with atomic_path(dst) as tmp:
        onnx.save(fp16, os.fspath(tmp))
    return Path(dst)


def emulate_fp16_onnx(src: str | Path, dst: str | Path, keep_softmax_fp32: bool = False) -> Path:
    """Write an FP32 ONNX that rounds weights and non-pinned activations to FP16."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from runtime.core.fileio import atomic_path

    model = _named(onnx.load(os.fspath(src)))
    g = model.graph
    pinned = set(fp32_pinned_nodes(model, keep_softmax_fp32))
    for init in g.initializer:
        if init.data_type == TensorProto.FLOAT:
            a = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(a.astype(np.float16).astype(np.float32), init.name))
    model = onnx.shape_inference.infer_shapes(model)
    g = model.graph
    float_vals = {v.name for v in list(g.value_info) + list(g.output)
                  if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    graph_outputs = {o.name for o in g.output}
    new_nodes = []
    renames = {}
    for n in g.node:
        n.input[:] = [renames.get(i, i) for i in n.input]
        new_nodes.append(n)
        if n.name in pinned or n.op_type in ("Shape", "Constant", "Cast") or n.op_type.startswith("Reduce"):
            continue
        for k, out in enumerate(n.output):
            if out not in float_vals or out in graph_outputs:
                continue
            raw = f"{out}__fp32raw"
            n.output[k] = raw
            h = f"{out}__fp16"
            new_nodes.append(helper.make_node("Cast", [raw], [h], to=TensorProto.FLOAT16,
                                              name=f"{n.name}__to16_{k}"))
            new_nodes.append(helper.make_node("Cast", [h], [out], to=TensorProto.FLOAT,
                                              name=f"{n.name}__to32_{k}"))
    del g.node[:]
    g.node.extend(new_nodes)
    with atomic_path(dst) as tmp:
        onnx.save(model, os.fspath(tmp))
    return Path(dst)


def fp16_runner(spec, src: str | Path, work_dir: str | Path, keep_softmax_fp32: bool = False,
                mode: str = "emulated", threads: int = 0):
    """An activated ORT CPU runner of the FP16 version of ``src``; ``runner.fp16_mode`` says how.

    ``mode``: "emulated" (default; see the module docstring), "native" (real FP16 graph;
    fails with onnxruntime 1.31's float16 converter on these graphs: duplicate Cast names),
    or "auto" (native, else emulated).
    """
    from runtime.core.backends.onnxruntime import OnnxRuntimeStageRunner

    work_dir = Path(work_dir)
    stem = Path(src).stem
    if mode in ("auto", "native"):
        dst = work_dir / f"{stem}.fp16.onnx"
        try:
            to_fp16_onnx(src, dst, keep_softmax_fp32)
            r = OnnxRuntimeStageRunner(spec, dst, threads, ["CPUExecutionProvider"]).activate()
            r.infer({t.name: np.zeros(t.concrete_shape(
                {k: v[0] for k, v in spec.axis_ranges.items()}), np.float32) for t in spec.inputs})
            r.calls = 0
            r.fp16_mode = "native"
            return r
        except Exception as e:  # missing CPU FP16 kernel, etc.
            if mode == "native":
                raise
            reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    dst = work_dir / f"{stem}.fp16emu.onnx"
    emulate_fp16_onnx(src, dst, keep_softmax_fp32)
    r = OnnxRuntimeStageRunner(spec, dst, threads, ["CPUExecutionProvider"]).activate()
    r.fp16_mode = "emulated" if mode == "emulated" else f"emulated (native failed: {reason})"
    return r
