"""What the camera loop's inference thread does with each frame: a small strategy object.

* :class:`SegmenterStep` -- few-shot: every frame segmented against the
  references (``segmenter.segment(rgb)``, normally
  :class:`runtime.sam2.fewshot.FewShotSegmenter`).
* :class:`TrackingStep` -- SAM2 video tracking (:class:`runtime.sam2.tracker.VideoTracker`):
  the objects are prompted on the first frame the loop processes, then tracked
  forward through every later one with SAM2's memory (bounded: a live stream
  is unbounded in length).

A step takes the frame as ``uint8`` RGB and returns a :class:`StepResult`:
one mask per label (concept or object name) and its stage times. The loop
owns neither the step nor its product; the caller closes them (:meth:`InferenceStep.close`).
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from runtime.camera.prompts import ObjectPrompt
from runtime.errors import InputError

FEWSHOT_STAGES = ("preprocess", "image_encoder", "memory_attention", "mask_decoder", "postprocess")


@dataclass
class StepResult:
    """Masks ``{label: [H,W] bool}`` for one frame, and stage times in seconds."""

    masks: Dict[str, np.ndarray]
    timings: Dict[str, float] = field(default_factory=dict)


class InferenceStep(abc.ABC):
    """One frame in, masks out. Called on the loop's inference thread only."""

    mode: str = ""

    @abc.abstractmethod
    def __call__(self, rgb: np.ndarray) -> StepResult:
        """``rgb``: ``[H,W,3]`` uint8 RGB. A :class:`InputError` means bad user input (exit 2)."""

    def reset(self) -> None:
        """The ``r`` key: start over (reload references / prompt again on the next frame)."""

    def describe(self) -> str:
        """One line for the start-up log."""
        return self.mode

    @property
    @abc.abstractmethod
    def product(self):
        """The segmenter or tracker the step runs (closed by :meth:`close`)."""

    @property
    def backend(self) -> str:
        return self.product.backend

    def close(self) -> None:
        self.product.close()


class SegmenterStep(InferenceStep):
    """Few-shot segmentation of every frame; ``on_reset(segmenter)`` runs on the ``r`` key."""

    mode = "few-shot"

    def __init__(self, segmenter, on_reset: Optional[Callable[[object], None]] = None):
        self.segmenter, self.on_reset = segmenter, on_reset

    @property
    def product(self):
        return self.segmenter

    def __call__(self, rgb: np.ndarray) -> StepResult:
        res = self.segmenter.segment(rgb)
        return StepResult({str(c): r.mask for c, r in res.concepts.items()},
                          {s: float(res.timings.get(s, 0.0)) for s in FEWSHOT_STAGES})

    def reset(self) -> None:
        if self.on_reset is not None:
            self.on_reset(self.segmenter)

    def describe(self) -> str:
        seg = self.segmenter
        try:
            n = sum(seg.num_references(c) for c in seg.concepts)
            return f"few-shot, concepts {list(seg.concepts)} ({n} references)"
        except AttributeError:
            return self.mode


class _OneFrame:
    """Iterator feeding ``VideoTracker.propagate`` the frame the step was just given."""

    def __init__(self) -> None:
        self.frame: Optional[np.ndarray] = None

    def __iter__(self) -> "_OneFrame":
        return self

    def __next__(self) -> np.ndarray:
        if self.frame is None:
            raise StopIteration
        f, self.frame = self.frame, None
        return f


class TrackingStep(InferenceStep):
    """Prompt ``objects`` on the first frame, then track them frame after frame.

    Frames are numbered by this step (0, 1, 2, ... as processed), so frames a
    live source drops never leave gaps in the tracker's memory. ``tracker`` is
    a :class:`runtime.sam2.tracker.VideoTracker` (its ``threshold`` decides the
    masks). The ``r`` key forgets the memory and prompts again on the next frame.
    A frame of another size than the prompted one (a camera reconnected at
    another resolution) is tracked resized to the prompted size, and its masks
    are resized back.
    Timings: ``prompt`` on a prompted frame, ``track`` on the others (image
    encoder, memory attention, mask decoder and memory encoder of every object).
    """

    mode = "tracking"

    def __init__(self, tracker, objects: Sequence[ObjectPrompt]):
        if not objects:
            raise InputError("tracking needs at least one object prompt")
        self.tracker = tracker
        self.objects: List[ObjectPrompt] = list(objects)
        self._feed = _OneFrame()
        self._frames = None  # the propagate() generator, once prompted
        self._hw: Optional[Tuple[int, int]] = None  # the prompted frame's size

    @property
    def product(self):
        return self.tracker

    @property
    def names(self) -> List[str]:
        return [o.name for o in self.objects]

    def describe(self) -> str:
        return f"tracking {len(self.objects)} object(s): " + "; ".join(o.describe() for o in self.objects)

    def _start(self, rgb: np.ndarray) -> None:
        """Prompt every object on this frame (index 0)."""
        hw: Tuple[int, int] = rgb.shape[:2]
        self.tracker.reset()
        self._hw = hw
        for obj in self.objects:
            obj.check_frame(hw)
            try:
                self.tracker.add_prompt(0, obj.name, rgb, **obj.tracker_kwargs())
            except InputError as e:
                raise InputError(f"object {obj.name} ({' '.join(obj.args)}): {e}") from e
        self._frames = self.tracker.propagate(self._feed, num_frames=None)

    def __call__(self, rgb: np.ndarray) -> StepResult:
        t0 = time.perf_counter()
        stage = "track"
        if self._frames is None:
            self._start(rgb)
            stage = "prompt"
        size = None
        if rgb.shape[:2] != self._hw:  # e.g. a camera reconnected at another resolution
            import cv2

            size = (rgb.shape[1], rgb.shape[0])
            rgb = cv2.resize(rgb, (self._hw[1], self._hw[0]), interpolation=cv2.INTER_AREA)
        self._feed.frame = rgb
        out = next(self._frames)
        masks = {str(name): out.objects[name].mask for name in self.names}
        if size is not None:
            masks = {k: cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
                     for k, m in masks.items()}
        return StepResult(masks, {stage: time.perf_counter() - t0})

    def reset(self) -> None:
        if self._frames is not None:
            self._frames.close()
        self._frames = None
        self._hw = None
        self.tracker.reset()
