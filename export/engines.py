"""The TensorRT step of ``export.build``: engines from the verified ONNX files.

Where TensorRT or a GPU is absent this step records why and builds nothing;
the ONNX files stay usable with the ONNX Runtime backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict

from runtime.fileio import sha256_file
from runtime.spec import StageSpec

TIMING_CACHE_NAME = "timing.cache"


def build_engines(out: Path, specs: Dict[str, StageSpec], stage_records: Dict[str, dict],
                  args, previous: dict, log: Callable[[str], None]) -> dict:
    """Build one engine per stage into ``out``; fills ``stage_records[stage]["engine"]``.

    Returns the manifest's ``tensorrt`` entry: ``{"built": bool, "reason": str, ...}``.
    """
    if args.skip_tensorrt:
        log("[tensorrt] skipped (--skip-tensorrt): ONNX files only")
        return {"built": False, "reason": "--skip-tensorrt"}
    from export.trt_build import build_engine, tensorrt_status

    ok, reason = tensorrt_status()
    if not ok:
        log(f"[tensorrt] engines NOT built: {reason}. The ONNX files are verified and run "
            "with --backend onnxruntime; build engines on the target device with the same "
            "command.")
        return {"built": False, "reason": reason}
    timing_cache = out / TIMING_CACHE_NAME
    info = {"built": True, "timing_cache": TIMING_CACHE_NAME, "engines": {}}
    for name, spec in specs.items():
        onnx_rec = stage_records[name].get("onnx_int8") or stage_records[name]["onnx"]
        onnx_path = out / onnx_rec["file"]
        # int8 builds quantize only the stages calibration produced Q/DQ graphs
        # for; the others (the memory path by default) stay fp16.
        precision = args.precision
        if precision == "int8" and "onnx_int8" not in stage_records[name]:
            precision = "fp16"
        engine_path = out / f"{name}.{precision}.engine"
        prev = previous.get("stages", {}).get(name, {}).get("engine")
        if (prev and engine_path.is_file() and prev.get("sha256") == sha256_file(engine_path)
                and prev.get("onnx_sha256") == onnx_rec["sha256"]):
            log(f"[tensorrt] {name}: up to date, reusing {engine_path.name}")
            stage_records[name]["engine"] = prev
            continue
        log(f"[tensorrt] {name}: building {precision} engine (can take minutes) ...")
        record = build_engine(
            onnx_path, engine_path, spec, precision,
            keep_norm_fp32=not args.no_fp32_norm, timing_cache=timing_cache, log=log,
        )
        record.update(file=engine_path.name, sha256=sha256_file(engine_path),
                      onnx_sha256=onnx_rec["sha256"])
        stage_records[name]["engine"] = record
        info["engines"][name] = engine_path.name
        log(f"[tensorrt] {name}: built in {record.get('build_seconds', 0):.0f}s")
    return info
