"""Backends: open one runner per stage of an engines folder.

``onnxruntime`` runs the ONNX files (CPU; CUDA with onnxruntime-gpu),
``tensorrt`` runs the ``.engine`` files, ``auto`` picks TensorRT when the folder
has engines and TensorRT imports, else ONNX Runtime.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Dict, Optional

from runtime.backends.base import BackendUnavailable, StageRunner
from runtime.manifest import manifest_specs, stage_file
from runtime.spec import STAGES, StageSpec

BACKENDS = ("auto", "onnxruntime", "tensorrt")


def resolve_backend(backend: str, manifest: dict, stages=STAGES) -> str:
    """The concrete backend for ``backend`` ("auto" resolved) or a clear error."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    has_engines = all(manifest["stages"][s].get("engine") for s in stages)
    if backend == "auto":
        if has_engines and importlib.util.find_spec("tensorrt") is not None:
            return "tensorrt"
        return "onnxruntime"
    if backend == "tensorrt" and not has_engines:
        raise BackendUnavailable(
            "this engines folder has no TensorRT engines (built where TensorRT was absent: "
            f"{manifest.get('tensorrt', {}).get('reason', 'unknown reason')}); rebuild it on the "
            "device with `python -m export.build`, or use --backend onnxruntime"
        )
    return backend


def open_runners(engine_dir: str | Path, manifest: dict, backend: str = "auto",
                 threads: int = 0, providers=None,
                 specs: Optional[Dict[str, StageSpec]] = None) -> Dict[str, StageRunner]:
    """Create and activate one runner per stage (all or nothing).

    ``specs``: the stages to open, in order (default: the four SAM2 stages of
    the manifest; the dense models pass their own).
    """
    specs = manifest_specs(manifest) if specs is None else specs
    stages = tuple(specs)
    kind = resolve_backend(backend, manifest, stages)
    runners: Dict[str, StageRunner] = {}
    try:
        if kind == "onnxruntime":
            from runtime.backends.onnxruntime import OnnxRuntimeStageRunner

            for s in stages:
                path = stage_file(engine_dir, manifest, s, "onnx")
                runners[s] = OnnxRuntimeStageRunner(specs[s], path, threads, providers).activate()
        else:
            from runtime.backends.tensorrt import TensorRTStageRunner

            # The first runner creates (and at deactivate frees) the CUDA stream
            # the others share, so the whole chain runs on one stream; close
            # runners in reverse order (see close_runners).
            stream = None
            for s in stages:
                path = stage_file(engine_dir, manifest, s, "engine")
                runners[s] = TensorRTStageRunner(
                    specs[s], path, manifest["stages"][s]["engine"], stream=stream).activate()
                stream = runners[s].stream
    except Exception:
        close_runners(runners)
        raise
    return runners


def close_runners(runners: Dict[str, StageRunner]) -> None:
    """Deactivate runners in reverse order of creation (the stream owner last)."""
    for r in reversed(list(runners.values())):
        r.deactivate()


__all__ = ["close_runners", "BACKENDS", "BackendUnavailable", "StageRunner", "open_runners", "resolve_backend"]
