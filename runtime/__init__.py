"""sam2-edge runtime: few-shot segmentation, SAM2 image prompts and video tracking, dense
segmentation and encoder features over ONNX Runtime or TensorRT.

Imports NumPy, OpenCV and the inference backends only (never torch, sam2,
``export`` or ``calib``); runs on Python 3.10. Layout: ``runtime.core``
(tensor contract, model folder, session, backends, comparison, image I/O),
``runtime.sam2`` (few-shot, image predictor, video tracker), ``runtime.dense``
(SAM2-UNet / SAM2-UNeXT, features), ``runtime.camera`` (the live loop),
``runtime.cli`` (``python -m runtime COMMAND``).
"""

from runtime.core.session import EngineSession
from runtime.dense.features import FeatureExtractor
from runtime.dense.segmenter import DenseSegmenter
from runtime.errors import (BackendUnavailable, EngineIncompatible, InputError, ModelFolderError,
                            ProfileLimitError, Sam2EdgeError, UsageError)
from runtime.sam2.fewshot import FewShotSegmenter
from runtime.sam2.predictor import ImagePredictor
from runtime.sam2.results import ConceptResult, SegmentationResult
from runtime.sam2.tracker import ObjectMask, TrackedFrame, VideoTracker

__all__ = ["EngineSession", "FewShotSegmenter", "ImagePredictor", "VideoTracker", "DenseSegmenter",
           "FeatureExtractor", "ConceptResult", "SegmentationResult", "ObjectMask", "TrackedFrame",
           "Sam2EdgeError", "UsageError", "InputError", "ProfileLimitError", "ModelFolderError",
           "EngineIncompatible", "BackendUnavailable"]
