"""FP16 ONNX files: the mixed-precision graphs strongly typed FP16 engines are built from.

A strongly typed TensorRT network runs every tensor in the type the ONNX graph
gives it, so the FP16 policy lives in the file: weights and activations FP16,
and in FP32 the operators whose range or accumulation FP16 does not hold
(:data:`FP32_OPS`): normalisation and its reductions (``LayerNormalization``,
the ``ReduceMean``/``Pow``/``Sqrt`` of the decomposed LayerNorm2d), softmax
(attention logits), ``Erf`` (GELU), ``Resize`` and ``Range`` (position
encodings). The graph's inputs and outputs stay FP32, so a runner feeds an
FP16 file exactly as the FP32 one.

The converter is ``onnxruntime.transformers.float16.convert_float_to_float16``
(the same code as onnxconverter-common's): it ships inside the onnxruntime
wheel the project already pins, and the files it writes load and run in
ONNX Runtime's CPU provider, so every FP16 file is measured here before an
engine is built from it. NVIDIA ModelOpt's AutoCast was evaluated too: equal
accuracy on these graphs, but ``nvidia-modelopt[onnx]`` installs 6.5 GB
(torch, CuPy, a CUDA toolkit and its own onnxruntime-gpu beside ours); see
``bench/reports/precision.md``.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Dict, Sequence

import numpy as np
import onnx

from runtime.core.fileio import atomic_path

# Operators kept in FP32 in every FP16 (and INT8) file; measured in bench/reports/precision.md.
FP32_OPS = ("LayerNormalization", "ReduceMean", "Pow", "Sqrt", "Softmax", "Resize", "Range", "Erf")
CONVERTER = "onnxruntime.transformers.float16.convert_float_to_float16"


def to_fp16(model: onnx.ModelProto, fp32_ops: Sequence[str] = FP32_OPS) -> onnx.ModelProto:
    """``model`` with FP16 weights and activations, ``fp32_ops`` in FP32, FP32 inputs and outputs."""
    from onnxruntime.transformers import float16

    return float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=list(fp32_ops))


def write_fp16(src: str | Path, dst: str | Path, fp32_ops: Sequence[str] = FP32_OPS) -> Dict:
    """Write the FP16 version of the ONNX file ``src`` to ``dst`` (atomically); returns its facts."""
    import onnxruntime

    model = to_fp16(onnx.load(os.fspath(src)), fp32_ops)
    with atomic_path(dst) as tmp:
        onnx.save(model, os.fspath(tmp))
    return {"converter": f"{CONVERTER} (onnxruntime {onnxruntime.__version__})", "fp32_ops": list(fp32_ops),
            **precision_summary(model)}


def precision_summary(model: onnx.ModelProto) -> Dict:
    """Weight elements in FP16 / FP32 and the nodes left in FP32 by type (what the engine will run)."""
    init: Counter = Counter()
    for i in model.graph.initializer:
        init[onnx.TensorProto.DataType.Name(i.data_type)] += int(np.prod(i.dims, dtype=np.int64))
    typed = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info) + list(model.graph.output)}
    fp32_nodes = Counter(n.op_type for n in model.graph.node
                         if n.op_type != "Cast" and any(typed.get(o) == onnx.TensorProto.FLOAT for o in n.output))
    return {"weights": {"float16": init.get("FLOAT16", 0), "float32": init.get("FLOAT", 0)},
            "fp32_nodes": dict(sorted(fp32_nodes.items()))}
