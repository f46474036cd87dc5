"""Explicit INT8 for TensorRT: Q/DQ ONNX per stage, FP16 in the rest of the graph.

A strongly typed engine is as precise as its file, so the INT8 file carries
everything: QuantizeLinear/DequantizeLinear pairs with calibrated scales on
the inputs of Conv / MatMul / Gemm (what TensorRT fuses into INT8 kernels),
and FP16 everywhere else (the FP16 policy of :mod:`calib.fp16`). The same
file runs in ONNX Runtime on the CPU, so its accuracy is measured here.

Quantizer: ``onnxruntime.quantization.quantize_static`` (it ships in the
onnxruntime wheel the project pins; NVIDIA ModelOpt's ONNX PTQ builds on the
same calibrators but needs ``nvidia-modelopt[onnx]``, 6.5 GB, see
:mod:`calib.fp16`), with TensorRT's rules for explicit quantization:

- ``QuantFormat.QDQ``, signed INT8, symmetric (zero point 0) activations and
  weights, per-channel weight scales;
- ``QuantizeBias`` off: TensorRT's parser accepts DequantizeLinear only on
  INT8/FP8/INT4 data, so an INT32 bias DQ would fail every build
  (:func:`trt_qdq_problems` checks each file);
- only Conv / MatMul / Gemm layers with weights quantized: normalisation,
  softmax, reductions, elementwise ops and the attention products stay in
  float;
- then opset 19 (the first where Q/DQ take FP16 scales, as ModelOpt does) and
  the FP16 conversion of everything but :data:`calib.fp16.FP32_OPS`.

Calibration streams (:func:`calibrate`): ONNX Runtime's calibrator sees one
recorded input at a time and merges its histograms, only the tensors of the
layers that are quantized (:func:`weight_nodes`) are collected, and they are
split into passes of at most :data:`PASS_BYTES` per inference, so memory is
bounded at any image size (before: every tensor of every sample at once,
24 GB at 512 px; see ``bench/reports/precision.md``).
Method: ``entropy`` (KL divergence; TensorRT's classic choice), ``minmax`` or
``percentile`` (99.999 %).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from runtime.core.fileio import atomic_path
from runtime.core.folder import ModelFolder, onnx_name
from runtime.errors import Sam2EdgeError, UsageError

METHODS = ("entropy", "minmax", "percentile")
DEFAULT_METHOD = "entropy"
DEFAULT_OP_TYPES = ("Conv", "MatMul", "Gemm")
QDQ_OPSET = 19  # Q/DQ with FP16 scales


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
    """A ``CalibrationDataReader`` replaying recorded feed dicts (graph inputs only), range-aware
    (``set_range``) so that ``quantize_static`` can calibrate one sample at a time."""
    from onnxruntime.quantization import CalibrationDataReader

    class FeedsReader(CalibrationDataReader):
        def __init__(self):
            self.set_range(0, len(samples))

        def set_range(self, start_index: int, end_index: int) -> None:
            self._it = iter(samples[start_index:end_index])

        def get_next(self):
            feeds = next(self._it, None)
            if feeds is None:
                return None
            return {n: np.ascontiguousarray(feeds[n]) for n in input_names}

        def rewind(self):
            self.set_range(0, len(samples))

        def __len__(self):
            return len(samples)

    return FeedsReader()


def weight_nodes(model, op_types: Iterable[str] = DEFAULT_OP_TYPES) -> List[str]:
    """Names of the ``op_types`` nodes with a weight (an initializer input): the layers INT8 pays off on.

    Products of two activations (attention's Q.K^T and A.V) are left out: they
    stay FP16, where TensorRT runs its fused attention, and their tensors
    (tokens x tokens per head: 512 MB per global-attention block of Hiera at
    1024 px) are what made calibration run out of memory.
    """
    init = {i.name for i in model.graph.initializer}
    ops = set(op_types)
    return [n.name for n in model.graph.node if n.op_type in ops and any(x in init for x in n.input)]


# Bytes of calibrated tensors one inference may hold at once; more go into further passes over the samples.
PASS_BYTES = 1 << 29


def tensor_bytes(model, names: Iterable[str]) -> Dict[str, int]:
    """Bytes of each float tensor in ``names`` for one inference (shape inference; a symbolic dim counts 1)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {v.name: v for v in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)}
    out = {}
    for n in names:
        v = infos.get(n)
        if v is None or not v.type.HasField("tensor_type"):
            out[n] = 0
            continue
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in v.type.tensor_type.shape.dim]
        out[n] = int(np.prod(dims, dtype=np.int64)) * 4
    return out


def passes(sizes: Mapping[str, int], budget: int = PASS_BYTES) -> List[List[str]]:
    """Tensors grouped (in graph order) so that each group's bytes stay within ``budget``."""
    groups, cur, used = [], [], 0
    for name, size in sizes.items():
        if cur and used + size > budget:
            groups.append(cur)
            cur, used = [], 0
        cur.append(name)
        used += size
    return groups + ([cur] if cur else [])


def _calibrator(method: str, fp32_onnx, aug: str, tensors: set):
    from onnxruntime.quantization import calibrate as ortc

    if method == "entropy":
        cal = ortc.EntropyCalibrater(os.fspath(fp32_onnx), None, aug, symmetric=True, num_bins=128,
                                     num_quantized_bins=128)
    elif method == "percentile":
        cal = ortc.PercentileCalibrater(os.fspath(fp32_onnx), None, aug, symmetric=True, num_bins=2048,
                                        percentile=99.999)
    else:
        cal = ortc.MinMaxCalibrater(os.fspath(fp32_onnx), None, aug, symmetric=True)
    base = cal.select_tensors_to_calibrate
    cal.select_tensors_to_calibrate = lambda m: ({t for t in base(m)[0] if t in tensors}, base(m)[1])
    cal.augment_graph()
    cal.execution_providers = ["CPUExecutionProvider"]
    cal.create_inference_session()
    return cal


def calibrate(fp32_onnx: str | Path, samples: Sequence[Mapping[str, np.ndarray]], nodes: Sequence[str],
              method: str, work: Path, budget: int = PASS_BYTES, log=None) -> Path:
    """Activation ranges of the inputs and outputs of ``nodes``; a range cache file for ``quantize_static``.

    ONNX Runtime's own calibrators, fed one sample at a time (histograms
    merged), with the calibrated tensors restricted to those of ``nodes``
    (ONNX Runtime would take every tensor of every node of their op types)
    and split into passes of at most ``budget`` bytes per inference (one pass
    over the samples each), so memory stays bounded at any image size. The
    result is written with ``save_tensors_data`` for
    ``quantize_static(calibration_cache_path=)``.
    """
    import gc

    import onnx
    from onnxruntime.quantization import calibrate as ortc

    model = onnx.load(os.fspath(fp32_onnx), load_external_data=False)
    wanted = set(nodes)
    init = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input]
    names = list(dict.fromkeys(t for n in model.graph.node if n.name in wanted for t in (*n.input, *n.output)
                               if t and t not in init))
    groups = passes(tensor_bytes(model, names), budget)
    del model
    data: Dict[str, Any] = {}
    cal_method = None
    for g, group in enumerate(groups, 1):
        if log and len(groups) > 1:
            log(f"calibration pass {g}/{len(groups)} ({len(group)} tensors)")
        cal = _calibrator(method, fp32_onnx, os.fspath(work / f"augmented-{g}.onnx"), set(group))
        with contextlib.redirect_stdout(io.StringIO()):  # ORT prints a line per calibration sample
            for k in range(len(samples)):
                cal.collect_data(make_reader(samples[k:k + 1], inputs))
            result = cal.compute_data()
        cal_method = result.calibration_method
        data.update(result.data)
        del cal, result
        gc.collect()  # the pass's ONNX Runtime session (and its arena) goes before the next one opens
        (work / f"augmented-{g}.onnx").unlink(missing_ok=True)
    cache = work / "ranges.json"
    ortc.save_tensors_data(ortc.TensorsData(cal_method, data), cache)
    return cache


@contextlib.contextmanager
def _no_preprocess_advice():
    """Drop quantize_static's root-logger advice to run ``quant_pre_process`` (its shape inference
    and graph optimisation are done by the exporter already), keep every other warning."""
    class Drop(logging.Filter):
        def filter(self, record):
            return not str(record.msg).startswith("Please consider")

    f = Drop()
    root = logging.getLogger()
    root.addFilter(f)
    try:
        yield
    finally:
        root.removeFilter(f)


def quantize_stage(fp32_onnx: str | Path, int8_onnx: str | Path,
                   samples: Sequence[Mapping[str, np.ndarray]], stage: str = "",
                   method: str = DEFAULT_METHOD, per_channel: bool = True,
                   op_types: Iterable[str] = DEFAULT_OP_TYPES,
                   max_samples: Optional[int] = None, log=None) -> Path:
    """Write ``int8_onnx``: the Q/DQ INT8 + FP16 version of ``fp32_onnx`` calibrated on ``samples``.

    The output appears atomically (complete or not at all).
    """
    import tempfile

    import onnx
    from onnx import version_converter
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from calib.fp16 import to_fp16

    name = stage or Path(fp32_onnx).stem
    if not samples:
        raise QuantizationError(f"{name}: no calibration samples were recorded for this stage")
    if max_samples:
        samples = samples[:max_samples]
    _calibration_method(method)  # a clear error for an unknown method
    try:
        model = onnx.load(os.fspath(fp32_onnx), load_external_data=False)
    except Exception as e:
        raise QuantizationError(f"{name}: cannot read {str(fp32_onnx)!r}: {type(e).__name__}: {e}") from e
    input_names = [i.name for i in model.graph.input]
    missing = [n for n in input_names if n not in samples[0]]
    if missing:
        raise QuantizationError(f"{name}: recorded samples lack graph inputs {missing}")
    nodes = weight_nodes(model, op_types)
    del model
    if not nodes:
        raise QuantizationError(f"{name}: no {'/'.join(op_types)} layer with weights to quantize")
    extra = {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "QuantizeBias": False,  # no INT32 DequantizeLinear: TensorRT's parser refuses it
    }
    int8_onnx = Path(int8_onnx)
    with tempfile.TemporaryDirectory(prefix="sam2edge-qdq-") as work:
        qdq = Path(work) / "qdq.onnx"
        try:
            cache = calibrate(fp32_onnx, samples, nodes, method, Path(work), log=log)
            with contextlib.redirect_stdout(io.StringIO()), _no_preprocess_advice():  # ORT's own prints
                quantize_static(
                    os.fspath(fp32_onnx), os.fspath(qdq), None,
                    quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    per_channel=per_channel,
                    nodes_to_quantize=nodes,
                    op_types_to_quantize=list(op_types),
                    calibrate_method=_calibration_method(method),
                    calibration_cache_path=cache,
                    extra_options=extra,
                )
            model = to_fp16(version_converter.convert_version(onnx.load(os.fspath(qdq)), QDQ_OPSET))
        except Exception as e:
            raise QuantizationError(f"{name}: INT8 quantization failed: {type(e).__name__}: {e}") from e
    problems = trt_qdq_problems(model)
    if problems:
        raise QuantizationError(f"{name}: the Q/DQ graph would not build in TensorRT: {'; '.join(problems[:5])}")
    with atomic_path(int8_onnx) as tmp:
        onnx.save(model, os.fspath(tmp))
    return int8_onnx


def trt_qdq_problems(model) -> list:
    """Why TensorRT's parser would refuse ``model``'s Q/DQ nodes (empty: none).

    DequantizeLinear must dequantize INT8 data (an initializer or a
    QuantizeLinear's output), never INT32 (quantized biases) or float.
    """
    import onnx

    init = {i.name: i.data_type for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    problems = []
    for n in model.graph.node:
        if n.op_type != "DequantizeLinear":
            continue
        src = n.input[0]
        if src in init:
            if init[src] != onnx.TensorProto.INT8:
                problems.append(f"{n.name}: DequantizeLinear of a {onnx.TensorProto.DataType.Name(init[src])} weight")
        elif src not in producer or producer[src].op_type != "QuantizeLinear":
            problems.append(f"{n.name}: DequantizeLinear of {src!r}, which no QuantizeLinear produces")
    return problems


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
        quantize_stage(src, dst, samples[s], stage=s, method=method, log=lambda m: log(f"[int8] {s}: {m}"))
        q = count_qdq(dst)
        log(f"[int8] {s}: wrote {dst.name} ({q['QuantizeLinear']} Q / {q['DequantizeLinear']} DQ nodes)")
        paths[s] = dst
    return paths
