"""Result types returned by the segmenters (runtime and PyTorch reference alike)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np


@dataclass
class ConceptResult:
    """One concept's prediction on one image.

    ``mask``: ``[H, W]`` bool at the input image's size; ``logits``: ``[H, W]``
    float32 mask logits (``mask = sigmoid(logits) > threshold``), None where
    the segmenter was told not to return them; ``iou``: the decoder's
    predicted IoU of the chosen mask.
    """

    mask: np.ndarray
    logits: Optional[np.ndarray]
    iou: float


@dataclass
class SegmentationResult:
    """All concepts' predictions on one image, plus per-stage wall times in seconds."""

    concepts: Dict[str, ConceptResult]
    timings: Dict[str, float] = field(default_factory=dict)

    def __getitem__(self, concept: str) -> ConceptResult:
        return self.concepts[concept]

    def __iter__(self):
        return iter(self.concepts)
