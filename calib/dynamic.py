"""Dynamic INT8 for ONNX Runtime on CPUs: ``<stage>.cpu-int8.onnx`` per stage.

Why a second INT8 scheme besides the Q/DQ graphs of :mod:`calib.quantize`:
those are made for TensorRT; ONNX Runtime's CPU provider runs them mostly as
float ops between Quantize/Dequantize pairs, slower than FP32. CPUs with
integer dot-product instructions run ORT's ``MatMulInteger`` faster than its
FP32 GEMM, and the stages are GEMM-bound. So here every ``MatMul``
(projections, MLPs and the attention products QK^T and A.V alike) becomes
``DynamicQuantizeLinear`` (uint8 activations, one scale per tensor, computed
on each call: nothing to calibrate) + ``MatMulInteger`` with int8 weights
(one scale per output channel): ``onnxruntime.quantization.quantize_dynamic``,
then :mod:`calib.dynamic_graph` gives the attention products a symmetric
int8 right operand. Everything else (LayerNorm, Softmax, GELU, convolutions,
RoPE) stays FP32. The rates measured on the project's CPUs are in
``bench/reports/cpu-int8-notes.md``.

Weight range: x86 CPUs without VNNI saturate full-range int8 weights in
MLAS's GEMM (runtime/core/backends/cpu_features.py), so there weights are
quantized to 7 bits (ORT's ``reduce_range``). :func:`resolve_weight_range`
picks it for the build machine unless told (``--cpu-int8-range``); the
manifest records it and the runtime refuses full-range files on such CPUs.

These files are for ONNX Runtime on the CPU only: TensorRT neither needs nor
builds them (it takes the Q/DQ graphs). Their accuracy is measured and gated
like every reduced-precision stage (:mod:`calib.gates`), on the calibration
episodes, before the build keeps them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, Sequence, Tuple

from runtime.core.fileio import atomic_path
from runtime.core.folder import ModelFolder, onnx_name
from runtime.errors import UsageError

WEIGHT_RANGES = ("auto", "reduced", "full")


def resolve_weight_range(choice: str = "auto") -> Tuple[bool, str]:
    """``(reduce_range, why)`` for ``choice`` ("auto": reduced where this CPU would saturate)."""
    from runtime.core.backends.cpu_features import describe, saturates_full_range

    if choice not in WEIGHT_RANGES:
        raise UsageError(f"unknown INT8 weight range {choice!r}; choose one of {', '.join(WEIGHT_RANGES)}")
    if choice == "auto":
        reduced = saturates_full_range()
        return reduced, (f"auto: {describe()} -> "
                         + ("7-bit weights (8-bit ones would saturate here)" if reduced
                            else "8-bit weights"))
    return choice == "reduced", f"{choice} (asked for)"


def quantize_dynamic_stage(fp32_onnx: str | Path, out_onnx: str | Path, stage: str = "",
                           reduce_range: bool = False) -> Path:
    """Write ``out_onnx``: ``fp32_onnx`` with its MatMuls in dynamic INT8 (atomically).

    ``reduce_range``: 7-bit weights (for x86 CPUs without VNNI; see the module
    docstring). The attention products are then tuned by
    :func:`calib.dynamic_graph.tune_activation_products`.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from calib.dynamic_graph import constants_to_initializers, tune_activation_products
    from calib.quantize import QuantizationError

    name = stage or Path(fp32_onnx).stem
    out_onnx = Path(out_onnx)
    quant_log = logging.getLogger()  # quantize_dynamic warns on the root logger about pre-processing
    level = quant_log.level
    quant_log.setLevel(logging.ERROR)
    try:
        with atomic_path(out_onnx) as tmp:
            try:
                prepared = onnx.load(os.fspath(fp32_onnx))
                constants_to_initializers(prepared)
                # MatMulConstBOnly=False: quantize_dynamic's default (True) would
                # leave the attention products (both inputs activations) in FP32.
                quantize_dynamic(prepared, os.fspath(tmp), weight_type=QuantType.QInt8,
                                 per_channel=True, op_types_to_quantize=["MatMul"],
                                 reduce_range=reduce_range, extra_options={"MatMulConstBOnly": False})
                quantized = onnx.load(os.fspath(tmp))
                tune_activation_products(quantized, reduce_range)
                onnx.save(quantized, os.fspath(tmp))
            except Exception as e:
                raise QuantizationError(
                    f"{name}: dynamic INT8 quantization failed: {type(e).__name__}: {e}") from e
    finally:
        quant_log.setLevel(level)
    return out_onnx


def count_integer_matmuls(onnx_path: str | Path) -> Dict[str, int]:
    """``MatMulInteger`` / remaining float ``MatMul`` node counts (a check that quantization went in)."""
    import onnx

    ops = [n.op_type for n in onnx.load(os.fspath(onnx_path), load_external_data=False).graph.node]
    return {"MatMulInteger": ops.count("MatMulInteger"), "MatMul": ops.count("MatMul")}


def quantize_dynamic_stages(folder: ModelFolder, stages: Sequence[str],
                            log=print, reduce_range: bool = False) -> Dict[str, Path]:
    """Quantize each of ``stages`` from its FP32 ONNX; returns ``{stage: <stage>.cpu-int8.onnx}``."""
    paths: Dict[str, Path] = {}
    bits = 7 if reduce_range else 8
    for s in stages:
        src = folder.path / folder.file_record(s, "fp32").file
        dst = folder.path / onnx_name(s, "cpu-int8")
        log(f"[cpu-int8] {s}: quantizing every MatMul (dynamic, per-channel {bits}-bit int8 weights) ...")
        quantize_dynamic_stage(src, dst, stage=s, reduce_range=reduce_range)
        n = count_integer_matmuls(dst)
        log(f"[cpu-int8] {s}: wrote {dst.name} ({n['MatMulInteger']} MatMulInteger, "
            f"{n['MatMul']} float MatMul left)")
        paths[s] = dst
    return paths
