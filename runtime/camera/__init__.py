"""Live segmentation from a camera, stream, video file or image folder (``python -m runtime camera``).

Few-shot mode segments every frame against reference images (the options of
:mod:`runtime.cli.references`); tracking mode (``--track``) follows objects
prompted on the first frame with SAM2's memory.

Modules, one job each: :mod:`~runtime.camera.sources` (frame sources and
reconnect policy), :mod:`~runtime.camera.prompts` (tracking prompts),
:mod:`~runtime.camera.steps` (what inference does per frame: few-shot
segmenter or tracker), :mod:`~runtime.camera.loop` (the threaded loop, queues,
writer, display, summary), :mod:`~runtime.camera.overlay` (drawing); the CLI
is :mod:`runtime.cli.camera`.
"""
