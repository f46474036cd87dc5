"""Backends: which backend and which file each stage of a model folder runs from, and its runners.

``onnxruntime`` runs the ONNX files (CPU; CUDA with onnxruntime-gpu),
``tensorrt`` runs the ``.engine`` files, ``auto`` picks TensorRT where it can
actually run this folder here (engines for every stage, a supported TensorRT,
a usable GPU, engines built for this TensorRT and GPU), else ONNX Runtime,
with a warning that says why when TensorRT was installed or the folder has
engines.

``cpu_int8`` picks, for ONNX Runtime, between a stage's FP32 ONNX and its
dynamic-INT8 variant (``<stage>.cpu-int8.onnx``, written by ``export.build
--cpu-int8-stages`` where it passed the accuracy gate): ``"auto"`` uses the
INT8 file of every stage that has one when the session runs on the CPU
provider only, ``"on"`` requires them (an error if the folder has none, or
with another backend), ``"off"`` always runs FP32. A file with full-range
(8-bit) weights is never run on an x86 CPU without VNNI, whose INT8 GEMM
saturates them (:mod:`runtime.core.backends.cpu_features`): ``"auto"`` runs
that stage in FP32 with a warning, ``"on"`` is an error; rebuild there with
``--cpu-int8-range reduced`` (what ``export.build`` picks by itself on such a CPU).
"""

from __future__ import annotations

import importlib.util
import warnings
from typing import Dict, Mapping, Optional, Sequence

from runtime.core.backends.base import StageRunner
from runtime.core.folder import ModelFolder
from runtime.core.spec import StageSpec
from runtime.errors import BackendUnavailable, UsageError

BACKENDS = ("auto", "onnxruntime", "tensorrt")
CPU_INT8_MODES = ("auto", "on", "off")
CPU_INT8_HELP = ("ONNX Runtime on the CPU: run the stages built with export.build --cpu-int8-stages in "
                 "dynamic INT8 (auto: when the folder has them; off: FP32 always)")


def resolve_backend(backend: str, folder: ModelFolder, stages: Sequence[str]) -> str:
    """The concrete backend for ``backend`` ("auto" resolved) or a clear error."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    has_engines = all(folder.stage(s).engine for s in stages)
    if backend == "auto":
        installed = importlib.util.find_spec("tensorrt") is not None
        if not (has_engines or installed):
            return "onnxruntime"  # nothing suggests TensorRT here: no warning
        from runtime.core.backends.tensorrt import why_not_runnable

        why = why_not_runnable(folder, stages)
        if why is None:
            return "tensorrt"
        warnings.warn(f"backend 'auto' runs ONNX Runtime: TensorRT cannot run this folder here: {why}",
                      RuntimeWarning, stacklevel=4)
        return "onnxruntime"
    if backend == "tensorrt" and not has_engines:
        raise BackendUnavailable(
            "this model folder has no TensorRT engines (built where TensorRT was absent: "
            f"{folder.manifest.tensorrt.get('reason', 'unknown reason')}); rebuild it on the "
            "device with `python -m export.build`, or use --backend onnxruntime"
        )
    return backend


def onnx_variants(folder: ModelFolder, stages: Sequence[str], backend: str, cpu_int8: str,
                  providers=None) -> Dict[str, str]:
    """The ONNX variant (``"fp32"``, ``"fp16"``, ``"cpu-int8"`` or ``"cpu-fused"``) each stage runs
    from on ONNX Runtime.

    On a GPU provider (CUDA, ...) a stage with an FP16 file runs it (the fast
    path there); on the CPU provider dynamic INT8 (see ``cpu_int8``), else the
    FP32 graph with fused attention where the folder has it (``cpu-fused``:
    the same results, block-wise attention without the score matrices: less
    memory, measured no slower), else FP32 (ONNX Runtime's CPU kernels have
    little FP16: the FP16 files run there, but slower than FP32).

    ``backend``: the resolved backend; ``providers``: ONNX Runtime providers
    (None: the default ones). See the module docstring for ``cpu_int8``.
    """
    if cpu_int8 not in CPU_INT8_MODES:
        raise UsageError(f"unknown cpu_int8 mode {cpu_int8!r}; choose one of {', '.join(CPU_INT8_MODES)}")
    has = [s for s in stages if "cpu-int8" in folder.stage(s).files]
    if cpu_int8 == "on":
        if backend != "onnxruntime":
            raise UsageError(f"cpu_int8='on' needs the onnxruntime backend (CPU), not {backend!r}")
        if not has:
            raise UsageError(
                "cpu_int8='on' but this model folder has no dynamic-INT8 ONNX files: build it "
                "with `python -m export.build ... --cpu-int8-stages image_encoder,memory_attention`, "
                "or run FP32 (cpu_int8='off')")
    from runtime.core.backends.onnxruntime import cpu_provider_only

    cpu_only = cpu_provider_only(providers)
    use = cpu_int8 == "on" or (cpu_int8 == "auto" and backend == "onnxruntime" and bool(has) and cpu_only)
    if use:
        has = _drop_saturating(folder, has, strict=cpu_int8 == "on")
    fp16 = {s for s in stages if "fp16" in folder.stage(s).files} if backend == "onnxruntime" and not cpu_only else set()
    fused = {s for s in stages if "cpu-fused" in folder.stage(s).files} if backend == "onnxruntime" and cpu_only \
        else set()
    return {s: "cpu-int8" if use and s in has else "fp16" if s in fp16 else "cpu-fused" if s in fused else "fp32"
            for s in stages}


def _drop_saturating(folder: ModelFolder, stages, strict: bool):
    """``stages`` less those whose INT8 weights are full range on a CPU that saturates them."""
    from runtime.core.backends.cpu_features import describe, saturates_full_range

    full = [s for s in stages if not folder.stage(s).files["cpu-int8"].info.get("reduce_range", False)]
    if not full or not saturates_full_range():
        return list(stages)
    msg = (f"the dynamic-INT8 files of {', '.join(full)} have full-range (8-bit) weights, which "
           f"this CPU ({describe()}) saturates in ONNX Runtime's INT8 GEMM (wrong results); "
           "rebuild them here with `python -m export.build ... --cpu-int8-stages STAGES "
           "--cpu-int8-range reduced`")
    if strict:
        raise UsageError(f"cpu_int8='on': {msg}, or run FP32 (cpu_int8='off')")
    warnings.warn(f"{msg}; running those stages in FP32", RuntimeWarning, stacklevel=4)
    return [s for s in stages if s not in full]


EDGE_MODES = ("auto", "backend", "host")
EDGE_OPTIONS = ("preprocess", "postprocess")
PREPROCESS_HELP = ("where frames become the model input: backend (the folder's preprocess graph for the "
                   "product, next to the encoder: the image predictor's resize, the tracker's video-loader "
                   "resize, the dense models' Pillow resize), host (NumPy, the same result), auto (backend on "
                   "TensorRT and ONNX Runtime GPU providers, host on the CPU provider)")
POSTPROCESS_HELP = ("where mask logits become frame-size masks: backend (the folder's postprocess graph, next to "
                    "the decoder; only the masks asked for come back), host (OpenCV), auto (backend on TensorRT "
                    "and ONNX Runtime GPU providers, host on the CPU provider, where OpenCV is faster)")


def edge_option(stage: str) -> str:
    """The option (:data:`EDGE_OPTIONS`) that places edge ``stage``: every ``*postprocess`` graph
    by ``postprocess``, every other (``preprocess``, ``video_preprocess``) by ``preprocess``."""
    return "postprocess" if stage.endswith("postprocess") else "preprocess"


def edge_stages_to_run(folder: ModelFolder, backend: str, providers=None,
                       modes: Optional[Mapping[str, str]] = None,
                       stages: Optional[Sequence[str]] = None) -> Dict[str, StageSpec]:
    """The folder's edge stages (its preprocess / postprocess graphs) that run on ``backend`` (resolved).

    ``stages``: the edge stages wanted (a product's; None: all of the
    folder's). ``modes``, per option (:func:`edge_option`, default "auto"):
    "backend" runs the stages it places (an error when the folder lacks one, or
    has no engine for it on TensorRT); "host" never (the host does that step);
    "auto" runs them on TensorRT and on ONNX Runtime's GPU providers, not on the
    CPU provider, where NumPy / OpenCV are faster than the graphs
    (bench/reports/frame-budget.md).
    """
    modes = dict(modes or {})
    for option, mode in modes.items():
        if option not in EDGE_OPTIONS:
            raise UsageError(f"unknown edge option {option!r}; choose from {', '.join(EDGE_OPTIONS)}")
        if mode not in EDGE_MODES:
            raise UsageError(f"unknown {option} mode {mode!r}; choose one of {', '.join(EDGE_MODES)}")
    edges = folder.manifest.edge_specs
    names = list(edges) if stages is None else list(stages)
    for option, mode in modes.items():  # "backend" with nothing of that kind to run it on
        if mode == "backend" and not any(edge_option(n) == option for n in names):
            if stages is not None:  # the product itself has no such step on the backend
                raise UsageError(f"{option}='backend' but this product runs no {option} graph (its edge graphs: "
                                 f"{', '.join(stages) or 'none'}); use {option}='auto' or 'host'")
            raise UsageError(f"{option}='backend' but {str(folder.path)!r} has no {option} graph (built by an "
                             f"older export.build): rebuild it, or use {option}='host'")
    cpu = False
    if backend == "onnxruntime":
        from runtime.core.backends.onnxruntime import cpu_provider_only

        cpu = cpu_provider_only(providers)
    out = {}
    for name in names:
        option = edge_option(name)
        mode = modes.get(option, "auto")
        spec = edges.get(name)
        usable = spec is not None and (backend != "tensorrt" or folder.stage(name).engine)
        if mode == "backend":
            if spec is None:
                raise UsageError(f"{option}='backend' but {str(folder.path)!r} has no {name} graph (built by "
                                 f"an older export.build): rebuild it, or use {option}='host'")
            if not usable:
                why = folder.manifest.tensorrt.get("edge_failures", {}).get(name)
                raise BackendUnavailable(f"{option}='backend' but the folder has no TensorRT engine for its {name} "
                                         f"graph ({why or 'not built'}); use {option}='host' (or 'auto')")
        if usable and (mode == "backend" or (mode == "auto" and not cpu)):
            out[name] = spec
    return out


def open_runners(folder: ModelFolder, specs: Mapping[str, StageSpec], backend: str = "auto",
                 threads: int = 0, providers=None, cpu_int8: str = "auto",
                 variants: Optional[Mapping[str, str]] = None, memory: str = "arena",
                 io_binding: Optional[bool] = None) -> Dict[str, StageRunner]:
    """Create and activate one runner per stage of ``specs`` (all or nothing).

    ``variants`` forces the ONNX variant of some stages (onnxruntime only);
    otherwise ``cpu_int8`` decides (module docstring). ``memory``, ``io_binding``:
    ONNX Runtime's CPU memory mode and IOBinding (``OnnxRuntimeStageRunner``;
    TensorRT ignores them: its stages always chain on the device).
    """
    stages = tuple(specs)
    kind = resolve_backend(backend, folder, stages)
    runners: Dict[str, StageRunner] = {}
    try:
        if kind == "onnxruntime":
            from runtime.core.backends.onnxruntime import OnnxRuntimeStageRunner

            chosen = onnx_variants(folder, stages, kind, cpu_int8, providers)
            chosen.update(variants or {})
            for s in stages:
                rec = folder.file_record(s, chosen[s])
                runners[s] = OnnxRuntimeStageRunner(specs[s], folder.read_verified(rec), threads, providers,
                                                    source=rec.file, memory=memory, io_binding=io_binding).activate()
        else:
            from runtime.core.backends.tensorrt import TensorRTStageRunner

            # The first runner creates (and at deactivate frees) the CUDA stream
            # the others share, so the whole chain runs on one stream; close
            # runners in reverse order (see close_runners).
            stream = None
            for s in stages:
                rec = folder.engine(s)
                runners[s] = TensorRTStageRunner(specs[s], folder.read_verified(rec.file_record), rec,
                                                 stream=stream).activate()
                stream = runners[s].stream
    except BaseException:
        close_runners(runners)
        raise
    return runners


def close_runners(runners: Mapping[str, StageRunner]) -> None:
    """Deactivate runners in reverse order of creation (the stream owner last)."""
    for r in reversed(list(runners.values())):
        r.deactivate()


__all__ = ["close_runners", "BACKENDS", "BackendUnavailable", "CPU_INT8_HELP", "CPU_INT8_MODES", "StageRunner",
           "EDGE_MODES", "EDGE_OPTIONS", "POSTPROCESS_HELP", "PREPROCESS_HELP", "edge_option", "edge_stages_to_run",
           "onnx_variants", "open_runners", "resolve_backend"]
