"""Reduced precision in the graph: FP16 and Q/DQ INT8 files, their calibration and accuracy gates.

- :mod:`calib.episodes`   few-shot episodes: the folder layout, or generated ones
- :mod:`calib.workloads`  what each folder kind is calibrated and gated on (episodes; prompts + clips; images)
- :mod:`calib.record`     run the FP32 pipeline, record every stage's real inputs (cached on disk)
- :mod:`calib.fp16`       FP16 ONNX files (normalisation, softmax in FP32) for strongly typed engines
- :mod:`calib.quantize`   Q/DQ INT8 + FP16 ONNX files per stage for TensorRT, streamed calibration
- :mod:`calib.dynamic`    dynamic INT8 ONNX per stage for ONNX Runtime on CPUs (``--cpu-int8-stages``)
- :mod:`calib.report`     per-stage and end-to-end accuracy vs FP32; ``python -m calib.report``
- :mod:`calib.gates`      accuracy gates and a mixed-precision suggestion when they fail
- :mod:`calib.build`      the steps ``export.build`` calls (calibration, build_fp16, build_int8)
"""

from calib.episodes import CalibrationDataError, Episode, generate_episodes, load_episodes

__all__ = ["CalibrationDataError", "Episode", "generate_episodes", "load_episodes", "build_int8"]


def build_int8(*args, **kwargs):
    """Lazy alias of :func:`calib.build.build_int8` (keeps ``import calib`` light)."""
    from calib.build import build_int8 as _b

    return _b(*args, **kwargs)
