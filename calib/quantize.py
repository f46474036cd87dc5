"""Explicit INT8: Q/DQ ONNX per stage with ``onnxruntime.quantization.quantize_static``.

Why explicit Q/DQ: TensorRT deprecated its implicit INT8 calibrators
(``IInt8EntropyCalibrator2``) in 10.1; a Q/DQ ONNX carries its own scales,
TensorRT builds it with the INT8 flag and no calibrator, and the very same
file runs in ONNX Runtime on the CPU, so its accuracy is measurable on
machines without a GPU (ours).

Why ``onnxruntime.quantization`` and not NVIDIA ModelOpt
(``nvidia-modelopt``, ``modelopt.onnx.quantization``): ModelOpt's ONNX PTQ
is itself built on ONNX Runtime's calibrators and mainly adds TensorRT-specific
placement heuristics; it pulls a large, fast-moving dependency set (and
targets CUDA EPs for calibration) that was not installed or verified on these
CPU-only machines, while ``onnxruntime.quantization`` ships inside the
onnxruntime wheel the project already depends on. The settings below follow
TensorRT's rules for explicit quantization so the output builds there too:

- ``QuantFormat.QDQ`` (QuantizeLinear/DequantizeLinear pairs, not QLinear ops);
- signed INT8, symmetric (zero point 0) for activations and weights —
  TensorRT accepts only that;
- per-channel weight scales (TensorRT supports per-channel on the weight axis);
- only Conv / MatMul / Gemm inputs are quantized (as ModelOpt does by
  default): LayerNorm, Softmax, reductions and elementwise ops stay in float,
  which is where SAM-family encoders lose accuracy when quantized.

Calibration method: ``entropy`` (KL divergence; TensorRT's classic choice),
``minmax`` or ``percentile`` (99.999 %).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Sequence

import numpy as np

from runtime.core.fileio import atomic_path
from runtime.core.folder import ModelFolder, onnx_name
from runtime.errors import Sam2EdgeError, UsageError

METHODS = ("entropy", "minmax", "percentile")
DEFAULT_METHOD = "entropy"
DEFAULT_OP_TYPES = ("Conv", "MatMul", "Gemm")


class QuantizationError(Sam2EdgeError):
    """A stage could not be quantized; the message names the stage and the cause."""


def _calibration_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    table = {"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax,
             "percentile": CalibrationMethod.Percentile}
    if method not in table:
        raise UsageError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    return table[method]


def make_reader(samples: Sequence[Mapping[str, np.ndarray]], input_names: Sequence[str]):
    """A ``CalibrationDataReader`` that replays recorded feed dicts (float32, graph inputs only)."""
    from onnxruntime.quantization import CalibrationDataReader

    class FeedsReader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(samples)

        def get_next(self):
            feeds = next(self._it, None)
            if feeds is None:
                return None
            return {n: np.ascontiguousarray(feeds[n], dtype=np.float32) for n in input_names}

        def rewind(self):
            self._it = iter(samples)

        def __len__(self):
            return len(samples)

    return FeedsReader()


def quantize_stage(fp32_onnx: str | Path, int8_onnx: str | Path,
                   samples: Sequence[Mapping[str, np.ndarray]], stage: str = "",
                   method: str = DEFAULT_METHOD, per_channel: bool = True,
                   op_types: Iterable[str] = DEFAULT_OP_TYPES,
                   max_samples: Optional[int] = None) -> Path:
    """Write ``int8_onnx``: the Q/DQ INT8 version of ``fp32_onnx`` calibrated on ``samples``.

    The output appears atomically (complete or not at all).
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    name = stage or Path(fp32_onnx).stem
    if not samples:
        raise QuantizationError(f"{name}: no calibration samples were recorded for this stage")
    if max_samples:
        samples = list(samples)[:max_samples]
    calib_method = _calibration_method(method)
    model = onnx.load(os.fspath(fp32_onnx), load_external_data=False)
    input_names = [i.name for i in model.graph.input]
    missing = [n for n in input_names if n not in samples[0]]
    if missing:
        raise QuantizationError(f"{name}: recorded samples lack graph inputs {missing}")
    del model
    extra = {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        # Histogram calibrators: symmetric ranges to match ActivationSymmetric.
        "CalibTensorRangeSymmetric": True,
    }
    if method == "percentile":
        extra["CalibPercentile"] = 99.999
    int8_onnx = Path(int8_onnx)
    with atomic_path(int8_onnx) as tmp:
        try:
            quantize_static(
                os.fspath(fp32_onnx), os.fspath(tmp),
                make_reader(samples, input_names),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                op_types_to_quantize=list(op_types),
                calibrate_method=calib_method,
                calibration_providers=["CPUExecutionProvider"],
                extra_options=extra,
            )
        except Exception as e:
            raise QuantizationError(f"{name}: INT8 quantization failed: {type(e).__name__}: {e}") from e
    return int8_onnx


def count_qdq(onnx_path: str | Path) -> Dict[str, int]:
    """Number of QuantizeLinear / DequantizeLinear nodes (a quick check that Q/DQ went in)."""
    import onnx

    m = onnx.load(os.fspath(onnx_path), load_external_data=False)
    ops = [n.op_type for n in m.graph.node]
    return {"QuantizeLinear": ops.count("QuantizeLinear"),
            "DequantizeLinear": ops.count("DequantizeLinear")}


def quantize_stages(folder: ModelFolder, stages: Sequence[str],
                    samples: Mapping[str, Sequence[Mapping[str, np.ndarray]]],
                    method: str = DEFAULT_METHOD, out_dir: Optional[Path] = None,
                    log=print) -> Dict[str, Path]:
    """Quantize each of ``stages`` from its FP32 file; returns ``{stage: <stage>.int8.onnx path}``."""
    out_dir = Path(out_dir or folder.path)
    paths: Dict[str, Path] = {}
    for s in stages:
        src = folder.path / folder.file_record(s, "fp32").file
        dst = out_dir / onnx_name(s, "int8")
        log(f"[int8] {s}: calibrating ({method}, {len(samples[s])} recorded inputs) ...")
        quantize_stage(src, dst, samples[s], stage=s, method=method)
        q = count_qdq(dst)
        log(f"[int8] {s}: wrote {dst.name} ({q['QuantizeLinear']} Q / {q['DequantizeLinear']} DQ nodes)")
        paths[s] = dst
    return paths
