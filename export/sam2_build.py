"""The SAM2 builder (few-shot with SANSA adapters, or stock SAM2): a model folder in steps.

1. resolve what the files are (:func:`export.sources.resolve_sources`) and
   assemble the PyTorch model (:func:`export.assembly.assemble`);
2. export and verify the four stages (:func:`export.onnx_export.export_stage`),
   reusing those whose files still match a folder built from the same inputs;
3. host-side constants (``constants.npz``);
4. reduced precision, each file measured against one recorded FP32 run of the
   folder kind's workload and gated (:mod:`calib.build`): FP16 files
   (``--precision fp16``, and under ``int8``), Q/DQ INT8 + FP16 files
   (``--precision int8``), dynamic INT8 for ONNX Runtime on CPUs
   (``--cpu-int8-stages``);
5. TensorRT engines where TensorRT and a GPU are present (:func:`export.engines.build_engines`);
6. the manifest, written last and atomically (:class:`runtime.core.folder.ModelFolder`).
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from export.options import (BuildOptions, Log, banner_random_weights, finish, fingerprint, now, prepare_out,
                            versions)
from runtime.core.fileio import atomic_path, sha256_file
from runtime.core.folder import CONSTANTS_NAME, FileRecord, Manifest, ModelFolder, ModelRecord
from runtime.core.spec import check_image_size
from runtime.errors import UsageError
from runtime.sam2.spec import DEFAULT_AXIS_RANGES, STAGES, edge_specs, parse_stages, preprocess_spec, stage_specs

EXPORT_CODE_VERSION = 5  # bump when the exported graphs change meaning
DEFAULT_IMAGE_SIZE = 1024
# Prompted (conditioning) frames a stock-SAM2 tracker can attend to at once.
DENSE_ONLY = ("checkpoint", "trunk", "dino_config", "dino_size", "fpn", "split", "fp32_parts", "no_fp16_check")


def parity_cases(stage: str, ranges: Dict[str, tuple]) -> List[Dict[str, int]]:
    """Axis settings each stage is verified at: min and max of each dynamic axis."""
    if stage in ("image_encoder", "memory_encoder"):
        return [{"batch": 1}]
    if stage == "memory_attention":
        lo_m, lo_p = ranges["num_mem"][0], ranges["num_ptr"][0]
        hi_m, hi_p = ranges["num_mem"][2], ranges["num_ptr"][2]
        return [{"objects": 1, "num_mem": lo_m, "num_ptr": lo_p},
                {"objects": 2, "num_mem": hi_m, "num_ptr": hi_p}]
    return [{"objects": 1, "num_points": 1}, {"objects": 2, "num_points": 3}]


def parse_adapter_stages(text: str) -> tuple:
    """``"2,3"`` -> ``(2, 3)``; a clear error for anything else."""
    try:
        stages = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        stages = ()
    if not stages or any(s < 0 for s in stages):
        raise UsageError(f"--adapter-stages {text!r}: expected comma-separated 0-based stage numbers, e.g. 2,3")
    return stages


def _validate(opts: BuildOptions) -> None:
    opts.validate_common()
    opts.refuse(DENSE_ONLY, "to SAM2 builds (they are options of --model sam2-unet|sam2-unext|features)")
    if opts.given("max_prompt_frames") and not opts.stock_sam2:
        raise UsageError("--max-prompt-frames is for --stock-sam2 folders (video tracking); few-shot folders "
                         "attend to their references, see --help")
    if opts.max_objects < 1:
        raise UsageError(f"--max-objects must be >= 1, got {opts.max_objects}")
    if opts.max_prompt_frames < 1:
        raise UsageError(f"--max-prompt-frames must be >= 1, got {opts.max_prompt_frames}")
    check_image_size(opts.image_size or DEFAULT_IMAGE_SIZE)
    preprocess_spec(opts.image_size or DEFAULT_IMAGE_SIZE, opts.max_frame_side)  # a bad side, early
    if opts.int8_stages:
        parse_stages(opts.int8_stages)
    if opts.cpu_int8_stages:
        try:
            parse_stages(opts.cpu_int8_stages)
        except UsageError as e:
            raise UsageError(f"--cpu-int8-stages: {e}") from None
    if opts.random_weights and (opts.sam2_checkpoint or opts.adapter_checkpoint):
        raise UsageError("--random-weights and checkpoint paths exclude each other; pass one")


def build(opts: BuildOptions, log: Log) -> ModelFolder:
    """Build the SAM2 model folder ``opts`` asks for; its manifest says whether every check passed."""
    from export.adapters import fold_adapter_scale
    from export.assembly import assemble
    from export.models import ModelChoice
    from export.sources import resolve_sources

    _validate(opts)
    size = opts.image_size or DEFAULT_IMAGE_SIZE
    if opts.model is not None or opts.sam2_version is not None:
        ModelChoice(opts.model or "tiny", opts.sam2_version or "2.1", size)  # names a bad value early
    sources = resolve_sources(
        image_size=size, model=opts.model, sam2_version=opts.sam2_version,
        adapter_stages=None if opts.adapter_stages is None else parse_adapter_stages(opts.adapter_stages),
        channel_factor=opts.channel_factor, sam2_checkpoint=opts.sam2_checkpoint,
        adapter_checkpoint=opts.adapter_checkpoint, no_adapters=opts.no_adapters,
        random_weights=opts.random_weights)
    choice, adapters = sources.choice, sources.adapters
    out = opts.out or Path("engines") / f"{choice.name}-{choice.sam2_version}-{choice.image_size}-{opts.precision}"
    if opts.random_weights:
        banner_random_weights(log)
    log(f"[model] SAM2 {choice.sam2_version} {choice.name} at {choice.image_size}px"
        + ("" if adapters is None else f", adapters in stages {list(adapters.stages)} "
           f"(channel factor {adapters.channel_factor})"))
    from_files = {k: v for k, v in sources.origin.items() if v != "default" and not v.startswith("--")}
    if from_files:
        log("[model] from the files: " + "; ".join(f"{k} <- {v}" for k, v in from_files.items()))
    t0 = time.time()
    model, report = assemble(choice, adapters, sources.sam2, sources.adapter,
                             random_weights=opts.random_weights, seed=opts.seed,
                             allow_mismatch=opts.allow_key_mismatch, fewshot=not opts.stock_sam2)
    if report.ignored_disabled_heads:
        log(f"[model] {len(report.ignored_disabled_heads)} checkpoint tensors of the object-score "
            "head are unused (the few-shot config turns it off)")
    log(f"[model] assembled in {time.time() - t0:.1f}s")

    from export.onnx_export import export_stage
    from export.subnets import build_subnets, model_config, model_constants

    fold_adapter_scale(model)
    ranges = dict(DEFAULT_AXIS_RANGES)
    ranges["batch"] = (1, 1, opts.max_batch)
    ranges["objects"] = (1, 1, opts.max_objects)
    # Tracking (stock SAM2) attends to every prompted frame besides the recent
    # ones: room for --max-prompt-frames conditioning frames in the profiles.
    extra = opts.max_prompt_frames - 1 if opts.stock_sam2 else 0
    ranges["num_mem"] = (1, model.num_maskmem, model.num_maskmem + extra)
    ranges["num_ptr"] = (1, model.max_obj_ptrs_in_encoder, model.max_obj_ptrs_in_encoder + extra)
    specs = stage_specs(choice.image_size, ranges)
    ckpts = {k: (p, sha256_file(p)) for k, p in (("sam2", opts.sam2_checkpoint),
                                                 ("adapter", opts.adapter_checkpoint)) if p}
    fp = fingerprint({
        "code": EXPORT_CODE_VERSION, "model": choice.name, "version": choice.sam2_version,
        "size": choice.image_size,
        "adapters": None if adapters is None else [list(adapters.stages), adapters.channel_factor],
        "stock": opts.stock_sam2, "ckpt": {k: h for k, (_, h) in ckpts.items()},
        "random": [opts.random_weights, opts.seed if opts.random_weights else None],
        "ranges": ranges, "plain": opts.plain_export, "frame_side": opts.max_frame_side})
    previous = prepare_out(out, fp, opts.force, log)

    nets = build_subnets(model, fold_values=not opts.plain_export)
    stages = {
        name: export_stage(nets[name], specs[name], out, parity_cases(name, ranges),
                           previous.manifest.stages.get(name) if previous else None,
                           fold=not opts.plain_export, log=log, step=f"[{i}/4] ")
        for i, name in enumerate(STAGES, 1)}
    from export.edges import SAM2_EDGE_GRAPHS, export_edge

    edges = edge_specs(choice.image_size, opts.max_frame_side, ranges["objects"], tracking=opts.stock_sam2)
    edge_records = {name: export_edge(spec, SAM2_EDGE_GRAPHS[name], out,
                                      previous.manifest.edge_stages.get(name) if previous else None, log)
                    for name, spec in edges.items()}
    flops = _count_flops(model, nets, specs, opts.plain_export, log)
    constants_path = out / CONSTANTS_NAME
    with atomic_path(constants_path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **model_constants(model))

    manifest = Manifest(
        kind="sam2" if opts.stock_sam2 else "sam2-fewshot",
        model=ModelRecord(
            name=choice.name, image_size=choice.image_size, sam2_version=choice.sam2_version,
            config=choice.config_name,
            adapters=None if adapters is None else {"stages": list(adapters.stages),
                                                    "channel_factor": adapters.channel_factor,
                                                    "folded_into": "image_encoder"},
            random_weights=opts.random_weights, seed=opts.seed if opts.random_weights else None),
        model_config=model_config(model), specs=specs, stages=stages, precision=opts.precision,
        fingerprint=fp, created=now(), flops=flops,
        edge_specs=edges, edge_stages=edge_records,
        constants=FileRecord(CONSTANTS_NAME, sha256_file(constants_path)),
        provenance={
            "versions": versions(),
            "checkpoints": {k: {"path": str(p), "sha256": h} for k, (p, h) in ckpts.items()},
            "settings_from": sources.origin,
            "unused_checkpoint_keys": report.ignored_disabled_heads,
            "graphs": ("plain: sam2's order of operations, no constant folding" if opts.plain_export
                       else "optimised: value projections folded into output projections, "
                            "constants folded (exact)")})
    folder = ModelFolder(out, manifest)
    for rec in stages.values():
        rec.precision = "fp32"  # until the precision steps below write and pass their files
    checked = {**stages, **manifest.edge_stages}
    failed = [n for n, r in checked.items() if not r.parity["passed"]]
    if failed:
        manifest.fail(f"fp32 parity above {checked[failed[0]].parity['gate']} for {failed}")
    else:
        del model, nets  # the PyTorch model is done with: calibration needs the memory (1024 px: <= 6 GB)
        gc.collect()
        if not (opts.plain_export or opts.no_cpu_fused):  # plain folders keep sam2's graphs, for comparisons
            _cpu_fused(folder, ranges, previous, log)
        else:
            _drop_cpu_fused(folder, log)
        _reduced_precision(folder, opts, log)

    from export.engines import build_engines

    manifest.tensorrt = build_engines(folder, previous, skip=opts.skip_tensorrt, log=log)
    finish(folder, t0, log)
    return folder


def _count_flops(model, nets, specs, plain: bool, log: Log) -> dict:
    """FLOPs of every benchmark case (``bench.cases``): sam2's computation (value
    projections unfolded) and what the exported graphs execute; stored in the
    manifest so ``bench.throughput`` needs no PyTorch."""
    from bench.cases import sam2_counted_cases
    from export.flops import stage_flops
    from export.subnets import build_subnets

    t = time.time()
    cases = sam2_counted_cases(specs)
    reference = stage_flops(nets if plain else build_subnets(model, fold_values=False), specs, cases)
    exported = dict(reference)
    if not plain:  # only memory attention's export differs from sam2's computation
        exported.update(stage_flops({"memory_attention": nets["memory_attention"]}, specs, cases))
    log(f"[flops] {len(cases)} benchmark cases counted in {time.time() - t:.1f}s")
    return {"reference": reference, "export": exported}


def _cpu_fused(folder: ModelFolder, ranges: Dict[str, tuple], previous: Optional[ModelFolder], log: Log) -> None:
    """The fused-attention copies of the stages with attention, for ONNX Runtime's CPU provider."""
    from export.ort_optimize import CPU_FUSED_STAGES, export_cpu_fused

    for stage in CPU_FUSED_STAGES:
        export_cpu_fused(folder, stage, parity_cases(stage, ranges),
                         previous.manifest.stages.get(stage) if previous else None, log)


def _drop_cpu_fused(folder: ModelFolder, log: Log) -> None:
    """Remove an earlier build's fused-attention files (this build records none)."""
    from runtime.core.folder import onnx_name

    for stage in folder.manifest.stages:
        path = folder.path / onnx_name(stage, "cpu-fused")
        if path.is_file():
            path.unlink()
            log(f"[cpu-fused] {stage}: removed {path.name} of an earlier build (not asked for)")


def _reduced_precision(folder: ModelFolder, opts: BuildOptions, log: Log) -> None:
    """FP16 and Q/DQ INT8 files for the engines, dynamic INT8 for CPUs; one recorded FP32 run for all."""
    from calib.build import build_fp16, build_int8, calibration

    manifest = folder.manifest
    if opts.precision == "fp32" and not opts.cpu_int8_stages:
        return
    ctx = calibration(folder, opts.calib, log)
    if opts.precision in ("fp16", "int8"):
        fp16 = build_fp16(folder, ctx, log)
        manifest.checks["fp16"] = fp16
        if not fp16["passed"]:
            manifest.fail(f"fp16 accuracy gate failed: {'; '.join(fp16['reasons'])}. "
                          "Build with --precision fp32, or calibrate on data like yours (--calib)")
            log(f"[fp16] GATE FAILED: {manifest.status_reason}")
    if opts.precision == "int8":
        log(f"[int8] calibrating {opts.int8_stages} ({opts.calib_method}); the other stages FP16 ...")
        calib = build_int8(folder, opts.int8_stages, ctx, log, method=opts.calib_method)
        manifest.checks["int8"] = calib
        if not calib["passed"]:
            hint = calib["suggestion"]["text"] if calib.get("suggestion") else "keep every stage fp16"
            manifest.fail(f"int8 accuracy gate failed for {calib['failed_stages']}: "
                          f"{'; '.join(calib['reasons'])}. Suggested: {hint}")
            log(f"[int8] GATE FAILED: {manifest.status_reason}")
    if opts.cpu_int8_stages:
        from calib.dynamic import resolve_weight_range

        reduce_range, why = resolve_weight_range(opts.cpu_int8_range)
        log(f"[cpu-int8] dynamic INT8 for {opts.cpu_int8_stages}; weight range {why} ...")
        dyn = build_int8(folder, opts.cpu_int8_stages, ctx, log, scheme="dynamic",
                         apply_suggestion=True, reduce_range=reduce_range)
        manifest.checks["cpu-int8"] = dict(dyn, weight_range=why)
        kept = dyn["kept_int8"]
        log(f"[cpu-int8] kept for ONNX Runtime on the CPU: {', '.join(kept) if kept else 'none'}"
            + ("" if dyn["passed"] else " (the others stay FP32: see the gate above)"))
