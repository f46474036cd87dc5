"""``python -m export.build``: SAM2 (+ few-shot adapters) -> four verified ONNX files
-> TensorRT engines where TensorRT and a GPU are present -> ``manifest.json``.

Every file is written atomically; the manifest is written last, so a folder
whose manifest says ``"status": "complete"`` is complete. Re-running with the
same inputs reuses the stages whose files still match the manifest.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from calib.dynamic import WEIGHT_RANGES
from export.models import MODEL_NAMES, SAM2_VERSIONS, ModelChoice
from runtime.fileio import atomic_path, sha256_file, write_json_atomic
from runtime.manifest import CONSTANTS_NAME, FORMAT_VERSION, MANIFEST_NAME
from runtime.spec import DEFAULT_AXIS_RANGES, STAGES, check_image_size, stage_specs

EXPORT_CODE_VERSION = 3  # bump when the exported graphs change meaning
PRECISIONS = ("fp32", "fp16", "int8")
# fp32 parity gate for every stage (relative L2 to PyTorch).
FP32_PARITY_GATE = 1e-5
# Prompted (conditioning) frames a stock-SAM2 tracker can attend to at once.
MAX_PROMPT_FRAMES = 8


def parity_cases(stage: str, ranges: Dict[str, tuple]) -> List[Dict[str, int]]:
    """Axis settings each stage is verified at: min and max of each dynamic axis."""
    if stage == "image_encoder":
        return [{"batch": 1}]
    if stage == "memory_encoder":
        return [{"batch": 1}]
    if stage == "memory_attention":
        lo_m, lo_p = ranges["num_mem"][0], ranges["num_ptr"][0]
        hi_m, hi_p = ranges["num_mem"][2], ranges["num_ptr"][2]
        return [{"num_mem": lo_m, "num_ptr": lo_p}, {"num_mem": hi_m, "num_ptr": hi_p}]
    return [{"batch": 1, "num_points": 1}, {"batch": 1, "num_points": 3}]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except for flags and options whose default is "not given" (None)."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m export.build",
        description=(
            "Split SAM2 (+ SANSA few-shot adapters) into image encoder, memory encoder, "
            "memory attention and prompt encoder + mask decoder; export each to ONNX "
            "(opset 17), verify it against PyTorch in ONNX Runtime, build TensorRT "
            "engines when TensorRT and a GPU are present, and record everything in "
            "OUT/manifest.json."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("--precision", choices=PRECISIONS, default="fp16",
                   help="engine precision (fp16 keeps normalisation layers in fp32; int8 "
                        "quantizes with calibration and an accuracy gate)")
    p.add_argument("--model", default=None,
                   help=f"SAM2 size: {', '.join(MODEL_NAMES)} (default: what the checkpoints are, else "
                        "tiny); or sam2-unet, sam2-unext, features (dense models / encoder features: "
                        "`--model sam2-unet --help`)")
    p.add_argument("--sam2-version", default=None,
                   help=f"SAM2 config family: {', '.join(SAM2_VERSIONS)} (default: what --sam2-checkpoint "
                        "is, told by its keys; 2.1 without one). SANSA adapters need 2.0")
    p.add_argument("--sam2-checkpoint", type=Path, help="official SAM2 checkpoint (.pt), as Meta ships it")
    ad = p.add_mutually_exclusive_group()
    ad.add_argument("--adapter-checkpoint", type=Path,
                    help="SANSA adapter checkpoint (.pth) as SANSA's main.py saves it; its 'args' "
                         "(sam2_version, channel_factor, adaptformer_stages) become the defaults")
    ad.add_argument("--no-adapters", action="store_true", help="export SAM2 without adapters")
    p.add_argument("--adapter-stages", default=None,
                   help="0-based Hiera stages that carry adapters, comma separated (default: the "
                        "adapter file's, else 2,3)")
    p.add_argument("--channel-factor", type=float, default=None,
                   help="adapter bottleneck = int(block input dim * factor): 0.3 strict "
                        "few-shot checkpoints, 0.8 generalist ones (default: the adapter file's "
                        "args or shapes, else 0.3)")
    p.add_argument("--stock-sam2", action="store_true",
                   help="keep the config's object-score head (plain SAM2 use) instead of "
                        "the few-shot overrides")
    p.add_argument("--image-size", type=int, default=1024,
                   help="square model input size (multiple of 32)")
    p.add_argument("--random-weights", action="store_true",
                   help="seeded random weights instead of checkpoints: try the tool without a "
                        "download (outputs are meaningless)")
    p.add_argument("--seed", type=int, default=0, help="seed for --random-weights")
    p.add_argument("--allow-key-mismatch", action="store_true",
                   help="load checkpoints even when keys are missing or unexpected")
    p.add_argument("--max-batch", type=int, default=DEFAULT_AXIS_RANGES["batch"][2],
                   help="largest batch of the image encoder / decoder engines")
    p.add_argument("--no-fp32-norm", action="store_true",
                   help="let TensorRT run normalisation layers in fp16 (not recommended)")
    p.add_argument("--calib", type=Path,
                   help="int8: folder of calibration episodes (see calib/); default: generated")
    p.add_argument("--int8-stages", default="image_encoder",
                   help="int8: comma-separated stages to quantize (or 'all'); the others "
                        "stay fp16. The build is refused (status failed) when the accuracy "
                        "gate fails, with the mixed setting that passes")
    p.add_argument("--cpu-int8", default="", metavar="STAGES",
                   help="also write <stage>.cpu-int8.onnx for these stages (comma separated, or "
                        "'all'): every MatMul in dynamic INT8 for ONNX Runtime on CPUs with "
                        "integer dot-product instructions (AVX512-VNNI/AVX-VNNI, Arm dotprod); "
                        "measured on --calib episodes and kept only where it passes the INT8 "
                        "gate. The runtime's onnxruntime backend uses them on the CPU "
                        "(--cpu-int8 auto|on|off there). Any --precision")
    p.add_argument("--cpu-int8-range", choices=WEIGHT_RANGES, default="auto",
                   help="--cpu-int8 weight range: 'reduced' (7-bit) for x86 CPUs without VNNI, "
                        "whose INT8 GEMM saturates 8-bit weights; 'full' (8-bit) for VNNI/Arm; "
                        "auto: what this machine's CPU needs (build on the CPU you deploy to; "
                        "the runtime refuses full-range files on CPUs that saturate them)")
    p.add_argument("--calib-method", choices=("entropy", "minmax", "percentile"),
                   default="entropy", help="int8: activation range calibration method")
    p.add_argument("--plain-export", action="store_true",
                   help="export sam2's computation as written: no value-projection folding in "
                        "memory attention, no constant folding (slower; the baseline "
                        "bench.throughput measures the optimised graphs against)")
    p.add_argument("--skip-tensorrt", action="store_true", help="export and verify ONNX only")
    p.add_argument("--force", action="store_true", help="rebuild every stage even if up to date")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default engines/<model>-<version>-<size>-<precision>)")
    args = p.parse_args(argv)
    return args


def parse_adapter_stages(text: str) -> tuple:
    """``"2,3"`` -> ``(2, 3)``; a clear error for anything else."""
    try:
        stages = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        stages = ()
    if not stages or any(s < 0 for s in stages):
        raise ValueError(f"--adapter-stages {text!r}: expected comma-separated 0-based stage numbers, e.g. 2,3")
    return stages


def _fail(msg: str) -> "NoReturn":  # noqa: F821
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def _log(msg: str) -> None:
    print(msg, flush=True)


def _fingerprint(args, choice, adapters, ckpt_hashes, ranges) -> str:
    desc = {
        "code": EXPORT_CODE_VERSION,
        "model": choice.name, "version": choice.sam2_version, "size": choice.image_size,
        "adapters": None if adapters is None else [list(adapters.stages), adapters.channel_factor],
        "stock": args.stock_sam2, "ckpt": ckpt_hashes,
        "random": [args.random_weights, args.seed if args.random_weights else None],
        "ranges": ranges, "plain": args.plain_export,
    }
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]


def _previous_manifest(out: Path) -> dict:
    try:
        return json.loads((out / MANIFEST_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _versions() -> Dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    from importlib.metadata import version

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sam2": version("sam2"),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from export.dense.build import wants_dense

    if wants_dense(argv):  # sam2-unet | sam2-unext | features: see export/dense/build.py
        from export.dense.build import main as dense_main

        return dense_main(argv)
    args = parse_args(argv)
    # --- validate everything before anything is written -------------------------
    try:
        check_image_size(args.image_size)
        stages_list = None if args.adapter_stages is None else parse_adapter_stages(args.adapter_stages)
        if args.model is not None or args.sam2_version is not None:
            ModelChoice(args.model or "tiny", args.sam2_version or "2.1", args.image_size)
    except ValueError as e:
        _fail(str(e))
    if args.max_batch < 1:
        _fail("--max-batch must be >= 1")
    if args.cpu_int8:
        from calib.build import parse_stages

        try:
            parse_stages(args.cpu_int8)
        except ValueError as e:
            _fail(f"--cpu-int8: {e}")
    from export.assembly import assemble
    from export.checkpoints import CheckpointError
    from export.sources import resolve_sources

    if args.random_weights and (args.sam2_checkpoint or args.adapter_checkpoint):
        _fail("--random-weights and checkpoint paths exclude each other; pass one")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        _fail(f"--out {str(args.out)!r} exists and is not a folder")
    try:
        sources = resolve_sources(
            image_size=args.image_size, model=args.model, sam2_version=args.sam2_version,
            adapter_stages=stages_list, channel_factor=args.channel_factor,
            sam2_checkpoint=args.sam2_checkpoint, adapter_checkpoint=args.adapter_checkpoint,
            no_adapters=args.no_adapters, random_weights=args.random_weights)
    except (CheckpointError, ValueError) as e:
        _fail(str(e))
    choice, adapters = sources.choice, sources.adapters
    out = args.out or Path("engines") / f"{choice.name}-{choice.sam2_version}-{choice.image_size}-{args.precision}"

    if args.random_weights:
        _log("!" * 72 + "\n!! --random-weights: the model has RANDOM weights; the engines run and are "
             "verified,\n!! but their masks mean nothing. Pass --sam2-checkpoint/--adapter-checkpoint "
             "for real use.\n" + "!" * 72)
    _log(f"[model] SAM2 {choice.sam2_version} {choice.name} at {choice.image_size}px"
         + ("" if adapters is None else f", adapters in stages {list(adapters.stages)} "
            f"(channel factor {adapters.channel_factor})"))
    from_files = {k: v for k, v in sources.origin.items() if v not in ("default",) and not v.startswith("--")}
    if from_files:
        _log("[model] from the files: " + "; ".join(f"{k} <- {v}" for k, v in from_files.items()))
    t0 = time.time()
    try:
        model, report = assemble(
            choice, adapters, sources.sam2, sources.adapter,
            random_weights=args.random_weights, seed=args.seed,
            allow_mismatch=args.allow_key_mismatch, fewshot=not args.stock_sam2,
        )
    except (CheckpointError, ValueError) as e:
        _fail(str(e))
    if report.ignored_disabled_heads:
        _log(f"[model] {len(report.ignored_disabled_heads)} checkpoint tensors of the object-score "
             "head are unused (the few-shot config turns it off)")
    _log(f"[model] assembled in {time.time() - t0:.1f}s")

    from export.adapters import fold_adapter_scale
    from export.onnx_export import check_parity, export_onnx
    from export.subnets import build_subnets, model_config, model_constants

    fold_adapter_scale(model)
    ranges = dict(DEFAULT_AXIS_RANGES)
    ranges["batch"] = (1, 1, args.max_batch)
    # Tracking (stock SAM2) attends to every prompted frame besides the recent
    # ones: room for MAX_PROMPT_FRAMES conditioning frames in the profiles.
    extra = MAX_PROMPT_FRAMES - 1 if args.stock_sam2 else 0
    ranges["num_mem"] = (1, model.num_maskmem, model.num_maskmem + extra)
    ranges["num_ptr"] = (1, model.max_obj_ptrs_in_encoder, model.max_obj_ptrs_in_encoder + extra)
    specs = stage_specs(choice.image_size, ranges)
    ckpt_hashes = {
        k: sha256_file(p) for k, p in
        (("sam2", args.sam2_checkpoint), ("adapter", args.adapter_checkpoint)) if p
    }
    fingerprint = _fingerprint(args, choice, adapters, ckpt_hashes, ranges)
    out.mkdir(parents=True, exist_ok=True)
    previous = _previous_manifest(out)
    same_inputs = previous.get("fingerprint") == fingerprint and not args.force

    nets = build_subnets(model, fold_values=not args.plain_export)
    stage_records: Dict[str, dict] = {}
    for i, name in enumerate(STAGES, 1):
        path = out / f"{name}.onnx"
        prev = previous.get("stages", {}).get(name, {}) if same_inputs else {}
        prev_onnx = prev.get("onnx") or {}
        if prev_onnx and path.is_file() and sha256_file(path) == prev_onnx.get("sha256"):
            _log(f"[{i}/4] {name}: up to date, reusing {path.name}")
            stage_records[name] = {"onnx": prev_onnx, "parity": prev["parity"]}
            continue
        t = time.time()
        _log(f"[{i}/4] {name}: exporting ONNX (opset 17) ...")
        export_onnx(nets[name], specs[name], path, fold=not args.plain_export)
        _log(f"[{i}/4] {name}: exported in {time.time() - t:.1f}s; verifying in ONNX Runtime ...")
        parity = check_parity(nets[name], specs[name], path, parity_cases(name, ranges))
        ok = parity["rel_l2"] <= FP32_PARITY_GATE
        _log(f"[{i}/4] {name}: rel L2 {parity['rel_l2']:.2e}, max abs {parity['max_abs']:.2e} "
             f"(gate {FP32_PARITY_GATE:.0e}) {'ok' if ok else 'FAILED'}")
        stage_records[name] = {
            "onnx": {"file": path.name, "sha256": sha256_file(path), "precision": "fp32"},
            "parity": {"rel_l2": parity["rel_l2"], "max_abs": parity["max_abs"],
                       "gate": FP32_PARITY_GATE, "passed": ok,
                       "cases": [{"axes": c["axes"], **{o: v for o, v in c["outputs"].items()}}
                                 for c in parity["cases"]]},
        }

    constants = model_constants(model)
    with atomic_path(out / CONSTANTS_NAME) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **constants)

    manifest = {
        "format_version": FORMAT_VERSION,
        "status": "complete",
        "fingerprint": fingerprint,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "precision": args.precision,
        "model": {
            "kind": "sam2" if args.stock_sam2 else "sam2-fewshot",
            "name": choice.name, "sam2_version": choice.sam2_version,
            "config": choice.config_name, "image_size": choice.image_size,
            "adapters": None if adapters is None else {
                "stages": list(adapters.stages), "channel_factor": adapters.channel_factor,
                "folded_into": "image_encoder"},
            "random_weights": args.random_weights,
            "seed": args.seed if args.random_weights else None,
        },
        "checkpoints": {
            k: {"path": str(p), "sha256": ckpt_hashes[k]}
            for k, p in (("sam2", args.sam2_checkpoint), ("adapter", args.adapter_checkpoint)) if p
        },
        "settings_from": sources.origin,
        "unused_checkpoint_keys": report.ignored_disabled_heads,
        "versions": _versions(),
        "axis_ranges": {k: list(v) for k, v in ranges.items()},
        "graphs": ("plain: sam2's order of operations, no constant folding" if args.plain_export
                   else "optimised: value projections folded into output projections, "
                        "constants folded (exact)"),
        "model_config": model_config(model),
        "constants": {"file": CONSTANTS_NAME, "sha256": sha256_file(out / CONSTANTS_NAME)},
        "stages": stage_records,
    }
    failed = [n for n, r in stage_records.items() if not r["parity"]["passed"]]
    if failed:
        manifest["status"] = "failed"
        manifest["status_reason"] = f"fp32 parity above {FP32_PARITY_GATE} for {failed}"

    if args.precision == "int8" and not failed:
        from calib import build_int8
        from calib.episodes import CalibrationDataError

        _log(f"[int8] calibrating {args.int8_stages} ({args.calib_method}) on "
             f"{args.calib or 'generated episodes'} ...")
        try:
            calib = build_int8(out, stage_records, args.int8_stages, args.calib, _log,
                               manifest=manifest, method=args.calib_method)
        except (CalibrationDataError, ValueError) as e:
            _fail(str(e))
        manifest["calibration"] = calib
        if not calib["passed"]:
            manifest["status"] = "failed"
            hint = calib["suggestion"]["text"] if calib.get("suggestion") else "keep every stage fp16"
            manifest["status_reason"] = (
                f"int8 accuracy gate failed for {calib['failed_stages']}: "
                f"{'; '.join(calib['reasons'])}. Suggested: {hint}")
            _log(f"[int8] GATE FAILED: {manifest['status_reason']}")

    if args.cpu_int8 and not failed:
        from calib import build_int8
        from calib.dynamic import resolve_weight_range
        from calib.episodes import CalibrationDataError

        reduce_range, why = resolve_weight_range(args.cpu_int8_range)
        _log(f"[cpu-int8] dynamic INT8 for {args.cpu_int8}, measured on "
             f"{args.calib or 'generated episodes'}; weight range {why} ...")
        try:
            dyn = build_int8(out, stage_records, args.cpu_int8, args.calib, _log,
                             manifest=manifest, scheme="dynamic", apply_suggestion=True,
                             reduce_range=reduce_range)
        except (CalibrationDataError, ValueError) as e:
            _fail(str(e))
        manifest["cpu_int8"] = dict(dyn, weight_range=why)
        kept = dyn["kept_int8"]
        _log(f"[cpu-int8] kept for ONNX Runtime on the CPU: {', '.join(kept) if kept else 'none'}"
             + ("" if dyn["passed"] else " (the others stay FP32: see the gate above)"))

    from export.engines import build_engines

    manifest["tensorrt"] = build_engines(out, specs, stage_records, args, previous if same_inputs else {}, _log)
    write_json_atomic(out / MANIFEST_NAME, manifest)
    _log(f"[done] {out}/{MANIFEST_NAME} ({manifest['status']}) in {time.time() - t0:.1f}s")
    return 0 if manifest["status"] == "complete" else 1


if __name__ == "__main__":
    sys.exit(main())
