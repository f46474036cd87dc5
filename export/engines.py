"""The TensorRT step of every build: one engine per stage, from the file of the stage's precision.

Where TensorRT or a GPU is absent this step records why and builds nothing;
the ONNX files stay usable with the ONNX Runtime backend. An engine of a
folder built from the same inputs is reused only when it is usable here
(:func:`runtime.core.folder.engine_usable_here`: same TensorRT version and
GPU, the check the runtime makes at load) and was built strongly typed from
the same file with the same profiles; otherwise it is rebuilt.
"""

from __future__ import annotations

from typing import Callable, Optional

from runtime.core.fileio import sha256_file
from runtime.core.folder import EngineRecord, ModelFolder, engine_name, engine_usable_here
from runtime.errors import ModelFolderError

TIMING_CACHE_NAME = "timing.cache"


def _profiles(spec) -> list:
    """The profile ranges an engine was (or would be) built with, as recorded."""
    return [{k: list(v) for k, v in p.items()} for p in spec.profile_ranges]


def build_engines(folder: ModelFolder, previous: Optional[ModelFolder], *, skip: bool,
                  log: Callable[[str], None]) -> dict:
    """Build one strongly typed engine per stage of ``folder``, from the file of the stage's precision.

    Fills each stage's ``engine`` record; returns the manifest's ``tensorrt``
    entry: ``{"built": bool, "reason": str, ...}``.
    """
    if skip:
        log("[tensorrt] skipped (--skip-tensorrt): ONNX files only")
        return {"built": False, "reason": "--skip-tensorrt"}
    from runtime.core.backends import cuda
    from export.trt_build import EngineBuildError, build_engine, tensorrt_status

    ok, reason = tensorrt_status()
    if not ok:
        log(f"[tensorrt] engines NOT built: {reason}. The ONNX files are verified and run "
            "with --backend onnxruntime; build engines on the target device with the same "
            "command.")
        return {"built": False, "reason": reason}
    from runtime.core.backends.tensorrt import load_tensorrt

    trt_version, gpu = load_tensorrt().__version__, cuda.gpu_record()
    timing_cache = folder.path / TIMING_CACHE_NAME
    info = {"built": True, "timing_cache": TIMING_CACHE_NAME, "engines": {}}
    for name, spec in folder.runnable_specs.items():
        stage = folder.stage(name)
        if stage.precision not in stage.files:
            raise ModelFolderError(f"stage {name!r} is to run at {stage.precision} but has no "
                                   f"{stage.precision} file to build its engine from; rebuild the folder")
        src = stage.files[stage.precision]
        engine_path = folder.path / engine_name(name, stage.precision)
        prev = previous.stage(name).engine if previous and name in previous.runnable_specs else None
        if (prev and engine_path.is_file() and prev.sha256 == sha256_file(engine_path)
                and prev.onnx_sha256 == src.sha256 and prev.built_from == stage.precision
                and prev.build.get("strongly_typed") and prev.build.get("profiles_spec") == _profiles(spec)):
            why = engine_usable_here(prev, trt_version, gpu)
            if why is None:
                log(f"[tensorrt] {name}: up to date, reusing {engine_path.name}")
                stage.engine = prev
                continue
            log(f"[tensorrt] {name}: rebuilding: {why}")
        log(f"[tensorrt] {name}: building a {stage.precision} engine from {src.file} (can take minutes) ...")
        try:
            record = build_engine(folder.path / src.file, engine_path, spec, timing_cache=timing_cache, log=log)
        except (EngineBuildError, ModelFolderError) as e:
            if name not in folder.manifest.edge_specs:
                raise
            # An edge stage is an accelerator: without its engine the host does its work.
            log(f"[tensorrt] {name}: engine NOT built ({type(e).__name__}: {e}); the runtime does "
                "this step on the host")
            info.setdefault("edge_failures", {})[name] = f"{type(e).__name__}: {e}"
            continue
        stage.engine = EngineRecord(
            file=engine_path.name, sha256=record.pop("sha256"), precision=stage.precision,
            built_from=stage.precision, onnx_sha256=src.sha256, tensorrt_version=record.pop("tensorrt_version"),
            gpu=record.pop("gpu"), build={**record, "profiles_spec": _profiles(spec)})
        info["engines"][name] = engine_path.name
        log(f"[tensorrt] {name}: built in {record.get('build_seconds', 0):.0f}s")
    return info
