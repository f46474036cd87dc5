"""Live few-shot segmentation from a camera, stream, video file or image folder.

``python -m runtime.camera --engines DIR --refs REFS --source SOURCE [--output out.mp4] [--display]``

Modules, one job each: :mod:`~runtime.camera.sources` (frame sources and
reconnect policy), :mod:`~runtime.camera.references` (reference folders and
``--ref`` arguments), :mod:`~runtime.camera.loop` (the threaded loop, queues,
writer, display, summary), :mod:`~runtime.camera.overlay` (drawing), and
``__main__`` (the CLI). Temporal memory across frames is not implemented: every
frame is segmented against the references only.
"""

from runtime.camera.loop import CameraLoop, Display, FrameQueue, LoopOptions, Summary, VideoSink
from runtime.camera.references import Reference, ReferenceError, collect_references
from runtime.camera.sources import FrameSource, RetryPolicy, SourceError, make_source

__all__ = [
    "CameraLoop", "Display", "FrameQueue", "LoopOptions", "Summary", "VideoSink",
    "Reference", "ReferenceError", "collect_references",
    "FrameSource", "RetryPolicy", "SourceError", "make_source",
]
