"""Live segmentation from a camera, stream, video file or image folder.

``python -m runtime.camera --engines DIR --refs REFS --source SOURCE [--output out.mp4] [--display]``
(few-shot: every frame against reference images + masks), or
``python -m runtime.camera --engines STOCK_DIR --track --box X0,Y0,X1,Y1 --source SOURCE ...``
(SAM2 video tracking of objects prompted on the first frame).

Modules, one job each: :mod:`~runtime.camera.sources` (frame sources and
reconnect policy), :mod:`~runtime.camera.references` (reference folders and
``--ref`` arguments), :mod:`~runtime.camera.prompts` (tracking prompts),
:mod:`~runtime.camera.steps` (what inference does per frame: few-shot
segmenter or tracker), :mod:`~runtime.camera.loop` (the threaded loop, queues,
writer, display, summary), :mod:`~runtime.camera.overlay` (drawing), and
``__main__`` (the CLI). In few-shot mode every frame is segmented against the
references only; in tracking mode SAM2's memory carries the objects from frame
to frame.
"""

from runtime.camera.loop import CameraLoop, Display, FrameQueue, LoopOptions, Summary, VideoSink
from runtime.camera.prompts import ObjectPrompt, PromptError, parse_prompts
from runtime.camera.references import Reference, ReferenceError, collect_references
from runtime.camera.sources import FrameSource, RetryPolicy, SourceError, make_source
from runtime.camera.steps import InferenceStep, SegmenterStep, StepResult, TrackingStep

__all__ = [
    "CameraLoop", "Display", "FrameQueue", "LoopOptions", "Summary", "VideoSink",
    "ObjectPrompt", "PromptError", "parse_prompts",
    "Reference", "ReferenceError", "collect_references",
    "InferenceStep", "SegmenterStep", "StepResult", "TrackingStep",
    "FrameSource", "RetryPolicy", "SourceError", "make_source",
]
