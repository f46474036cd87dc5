"""sam2-edge runtime: few-shot segmentation, SAM2 image prompts and video tracking
over ONNX Runtime or TensorRT engines.

Imports NumPy, OpenCV and the inference backends only (never torch, sam2,
``export`` or ``calib``); runs on Python 3.10.
"""

from runtime.image_predictor import ImagePredictor
from runtime.pipeline import FewShotSegmenter
from runtime.preprocess import InputError
from runtime.results import ConceptResult, SegmentationResult
from runtime.tracker import VideoTracker

__all__ = ["FewShotSegmenter", "ImagePredictor", "VideoTracker", "InputError",
           "ConceptResult", "SegmentationResult"]
