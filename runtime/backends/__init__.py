"""Backends: open one runner per stage of an engines folder.

``onnxruntime`` runs the ONNX files (CPU; CUDA with onnxruntime-gpu),
``tensorrt`` runs the ``.engine`` files, ``auto`` picks TensorRT when the folder
has engines and TensorRT imports, else ONNX Runtime.

``cpu_int8`` picks, for ONNX Runtime, between a stage's FP32 ONNX and its
dynamic-INT8 version (``<stage>.cpu-int8.onnx``, written by ``export.build
--cpu-int8`` where it passed the accuracy gate): ``"auto"`` uses the INT8
file of every stage that has one when the session runs on the CPU provider
only, ``"on"`` requires them (an error if the folder has none, or with
another backend), ``"off"`` always runs FP32. A file with full-range (8-bit)
weights is never run on an x86 CPU without VNNI, whose INT8 GEMM saturates
them (runtime/backends/cpu_features.py): ``"auto"`` runs that stage in FP32
with a warning, ``"on"`` is an error; rebuild there with ``--cpu-int8-range
reduced`` (what ``export.build`` picks by itself on such a CPU).
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Dict, Optional

from runtime.backends.base import BackendUnavailable, StageRunner
from runtime.manifest import manifest_specs, stage_file
from runtime.spec import STAGES, StageSpec

BACKENDS = ("auto", "onnxruntime", "tensorrt")
CPU_INT8_MODES = ("auto", "on", "off")
CPU_INT8_KEY = "onnx_cpu_int8"  # manifest stage entry of the dynamic-INT8 ONNX file
CPU_INT8_HELP = ("ONNX Runtime on the CPU: run the stages built with export.build --cpu-int8 in "
                 "dynamic INT8 (auto: when the folder has them; off: FP32 always)")


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


def onnx_file_kinds(manifest: dict, stages, kind: str, cpu_int8: str, providers=None) -> Dict[str, str]:
    """The manifest file entry (``"onnx"`` or ``"onnx_cpu_int8"``) each stage runs from.

    ``kind``: the resolved backend; ``providers``: ONNX Runtime providers
    (None: :func:`default_providers`). See the module docstring for ``cpu_int8``.
    """
    if cpu_int8 not in CPU_INT8_MODES:
        raise ValueError(f"unknown cpu_int8 mode {cpu_int8!r}; choose one of {', '.join(CPU_INT8_MODES)}")
    has = [s for s in stages if manifest["stages"][s].get(CPU_INT8_KEY)]
    if cpu_int8 == "on":
        if kind != "onnxruntime":
            raise ValueError(f"cpu_int8='on' needs the onnxruntime backend (CPU), not {kind!r}")
        if not has:
            raise ValueError(
                "cpu_int8='on' but this engines folder has no dynamic-INT8 ONNX files: build it "
                "with `python -m export.build ... --cpu-int8 image_encoder,memory_attention`, "
                "or run FP32 (cpu_int8='off')")
    use = cpu_int8 == "on"
    if cpu_int8 == "auto" and kind == "onnxruntime" and has:
        from runtime.backends.onnxruntime import default_providers

        use = list(providers or default_providers()) == ["CPUExecutionProvider"]
    if use:
        has = _drop_saturating(manifest, has, strict=cpu_int8 == "on")
    return {s: CPU_INT8_KEY if use and s in has else "onnx" for s in stages}


def _drop_saturating(manifest: dict, stages, strict: bool):
    """``stages`` less those whose INT8 weights are full range on a CPU that saturates them."""
    from runtime.backends.cpu_features import describe, saturates_full_range

    full = [s for s in stages if not manifest["stages"][s][CPU_INT8_KEY].get("reduce_range", False)]
    if not full or not saturates_full_range():
        return list(stages)
    msg = (f"the dynamic-INT8 files of {', '.join(full)} have full-range (8-bit) weights, which "
           f"this CPU ({describe()}) saturates in ONNX Runtime's INT8 GEMM (wrong results); "
           "rebuild them here with `python -m export.build ... --cpu-int8 STAGES "
           "--cpu-int8-range reduced`")
    if strict:
        raise ValueError(f"cpu_int8='on': {msg}, or run FP32 (cpu_int8='off')")
    warnings.warn(f"{msg}; running those stages in FP32", RuntimeWarning, stacklevel=3)
    return [s for s in stages if s not in full]


def open_runners(engine_dir: str | Path, manifest: dict, backend: str = "auto",
                 threads: int = 0, providers=None,
                 specs: Optional[Dict[str, StageSpec]] = None,
                 cpu_int8: str = "auto") -> Dict[str, StageRunner]:
    """Create and activate one runner per stage (all or nothing).

    ``specs``: the stages to open, in order (default: the four SAM2 stages of
    the manifest; the dense models pass their own). ``cpu_int8``: see the
    module docstring.
    """
    specs = manifest_specs(manifest) if specs is None else specs
    stages = tuple(specs)
    kind = resolve_backend(backend, manifest, stages)
    files = onnx_file_kinds(manifest, stages, kind, cpu_int8, providers)
    runners: Dict[str, StageRunner] = {}
    try:
        if kind == "onnxruntime":
            from runtime.backends.onnxruntime import OnnxRuntimeStageRunner

            for s in stages:
                path = stage_file(engine_dir, manifest, s, files[s])
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


__all__ = ["close_runners", "BACKENDS", "BackendUnavailable", "CPU_INT8_HELP", "CPU_INT8_MODES", "StageRunner",
           "onnx_file_kinds", "open_runners", "resolve_backend"]
