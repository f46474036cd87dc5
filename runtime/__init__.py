"""sam2-edge runtime: few-shot segmentation over ONNX Runtime or TensorRT engines.

Imports NumPy, OpenCV and the inference backends only (never torch, sam2,
``export`` or ``calib``); runs on Python 3.10.
"""

from runtime.pipeline import FewShotSegmenter
from runtime.preprocess import InputError
from runtime.results import ConceptResult, SegmentationResult

__all__ = ["FewShotSegmenter", "InputError", "ConceptResult", "SegmentationResult"]
