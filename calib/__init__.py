"""Explicit INT8 (Q/DQ ONNX) calibration, FP16 numerics checks and accuracy gates.

- :mod:`calib.episodes`  calibration set: a folder of few-shot episodes, or generated ones
- :mod:`calib.record`    run the FP32 pipeline, record every stage's real inputs (cached)
- :mod:`calib.quantize`  Q/DQ INT8 ONNX per stage (onnxruntime.quantization), for TensorRT
- :mod:`calib.dynamic`   dynamic INT8 ONNX per stage for ONNX Runtime on CPUs (``--cpu-int8``)
- :mod:`calib.fp16`      FP16 numerics in ONNX Runtime CPU (norms/softmax/reductions kept fp32)
- :mod:`calib.report`    per-stage and end-to-end accuracy vs FP32; ``python -m calib.report``
- :mod:`calib.gates`     accuracy gates and a mixed-precision suggestion when they fail
- :func:`calib.build.build_int8`  the single entry point ``export.build --precision int8`` calls
"""

from calib.episodes import CalibrationDataError, Episode, generate_episodes, load_episodes

__all__ = ["CalibrationDataError", "Episode", "generate_episodes", "load_episodes", "build_int8"]


def build_int8(*args, **kwargs):
    """Lazy alias of :func:`calib.build.build_int8` (keeps ``import calib`` light)."""
    from calib.build import build_int8 as _b

    return _b(*args, **kwargs)
