"""Accuracy of reduced-precision stages vs FP32: per stage and end to end.

Per stage: every recorded input of the stage (see :mod:`calib.record`) goes
through the FP32 ONNX and the variant; for each output, relative L2
``|a-b|/|a|`` (worst = max) and cosine similarity (worst = min) are taken.
End to end: the folder kind's workload (:mod:`calib.workloads`: few-shot
episodes, or prompts and tracking clips) runs with the variant runners
swapped in; its masks are compared with the FP32 masks (IoU; two empty masks
count as 1); mean and worst are reported.

CLI::

    python -m calib.report --model-dir DIR [--episodes DIR | --generated N]
        [--int8-stages image_encoder,mask_decoder] [--method entropy] [--fp16]
        [--write-manifest]

INT8/FP16 files made by the CLI go to ``DIR/calib_work/`` (the folder's
verified files are not touched); ``--write-manifest`` stores the tables in
``DIR/manifest.json`` under ``checks`` -> ``"report"``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from runtime.core.compare import compare_runners, mask_iou
from runtime.core.folder import ModelFolder

REPORT_KEY = "report"


def evaluate(folder: ModelFolder, workload, samples, fp32_logits: Sequence[np.ndarray],
             variants: Mapping[str, Any], precisions: Mapping[str, str]) -> dict:
    """Per-stage and end-to-end accuracy of one precision setting vs FP32.

    ``variants[stage]``: an ONNX path or an active runner for each reduced
    stage; ``precisions[stage]``: its label ("int8", "fp16", ...). Every
    runner this opens is closed again; given runners are closed too.
    """
    from calib.record import open_session
    from runtime.core.backends.onnxruntime import OnnxRuntimeStageRunner

    specs = folder.specs

    def runner(stage, model):
        if hasattr(model, "infer"):
            return model
        return OnnxRuntimeStageRunner(specs[stage], model, 0, ["CPUExecutionProvider"], memory="off").activate()

    stages: Dict[str, dict] = {}
    for s in specs:  # one stage at a time: two sessions open, not eight
        if s not in variants:
            stages[s] = {"precision": "fp32", "rel_l2": 0.0, "cosine": 1.0}
            continue
        with runner(s, folder.read_verified(folder.file_record(s, "fp32"))) as ref:
            test = runner(s, variants[s])
            stages[s] = {"precision": precisions.get(s, "reduced"), **compare_runners(ref, test, samples[s])}
            if test is not variants[s]:
                test.deactivate()
    with open_session(folder, variants=variants) as session:
        logits = workload.run(session)
    ious = [mask_iou(a > 0, b > 0) for a, b in zip(logits, fp32_logits)]
    e2e = {"mean_iou": float(np.mean(ious)), "worst_iou": float(np.min(ious)), "targets": len(ious), "parts": {}}
    start = 0
    for name, n in workload.parts():
        if n:
            part = ious[start:start + n]
            e2e["parts"][name] = {"mean_iou": float(np.mean(part)), "worst_iou": float(np.min(part)), "masks": n}
        start += n
    return {"stages": stages, "e2e": e2e, "ious": ious}


def evaluate_setup(folder: ModelFolder, calib_dir: Optional[Path], generated: int,
                   cache_dir: Optional[Path], log) -> dict:
    """The folder kind's workload + recorded FP32 inputs + an ``evaluate(variants, precisions)`` closure."""
    from calib.record import record_stage_inputs
    from calib.workloads import workload_for

    workload = workload_for(folder.manifest.kind, calib_dir, folder.manifest.image_size, generated)
    log(f"[calib] {workload.desc}")
    samples, fp32_logits = record_stage_inputs(folder, workload, cache_dir, log)

    def run(variants, precisions):
        return evaluate(folder, workload, samples, fp32_logits, variants, precisions)

    return {"workload": workload, "episodes_desc": workload.desc, "samples": samples,
            "fp32_logits": fp32_logits, "evaluate": run}


def format_table(result: dict, gates=None) -> str:
    """A plain-text table of one :func:`evaluate` result."""
    from calib.gates import DEFAULT_GATES

    g = gates or DEFAULT_GATES
    lines = [f"{'stage':<18} {'precision':<18} {'rel L2 (max)':>13} {'cosine (min)':>13}  gate",
             "-" * 72]
    for s, r in result["stages"].items():
        ok = "-" if r["precision"] == "fp32" else ("FAIL" if g.stage.failures(r) else "ok")
        lines.append(f"{s:<18} {r['precision']:<18} {r['rel_l2']:>13.3e} {r['cosine']:>13.5f}  {ok}")
    e = result["e2e"]
    ok = not g.e2e.failures(e["mean_iou"], e["worst_iou"])
    lines.append("-" * 72)
    lines.append(f"end to end mask IoU vs FP32 over {e['targets']} masks: mean {e['mean_iou']:.4f} "
                 f"(gate {g.e2e.min_mean_iou}), worst {e['worst_iou']:.4f} (gate {g.e2e.min_worst_iou})"
                 f"  {'ok' if ok else 'FAIL'}")
    parts = e.get("parts", {})
    if len(parts) > 1:
        lines += [f"  {name}: mean {p['mean_iou']:.4f}, worst {p['worst_iou']:.4f} over {p['masks']}"
                  for name, p in parts.items()]
    return "\n".join(lines)


def json_ready(obj):
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def main(argv: Optional[List[str]] = None) -> int:
    from runtime.cli.common import HelpFormatter, add_debug, run_main

    p = argparse.ArgumentParser(prog="python -m calib.report", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--model-dir", type=Path, required=True, help="model folder (export.build)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--episodes", type=Path,
                     help="calibration data of the folder's kind (layouts: calib/workloads.py)")
    src.add_argument("--generated", type=int, default=6, help="use N generated synthetic episodes / images")
    p.add_argument("--int8-stages", default="image_encoder",
                   help="comma-separated stages to quantize ('all' for every stage; '' for none)")
    p.add_argument("--method", default="entropy", help="calibration: entropy, minmax or percentile")
    p.add_argument("--fp16", action="store_true",
                   help="also write every stage's FP16 file (calib.fp16) into DIR/calib_work and measure it")
    p.add_argument("--no-suggest", action="store_true", help="do not search a passing mixed setting")
    p.add_argument("--write-manifest", action="store_true",
                   help="store the tables in manifest.json (checks -> report)")
    add_debug(p)
    a = p.parse_args(argv)
    return run_main(lambda: _report(a), debug=a.debug)


def _report(a) -> int:
    from calib.gates import DEFAULT_GATES, check, suggest_mixed
    from calib.quantize import quantize_stages
    from runtime.sam2.spec import parse_stages

    stages = parse_stages(a.int8_stages)
    folder = ModelFolder.open(a.model_dir, kinds=("sam2-fewshot", "sam2"))
    ctx = evaluate_setup(folder, a.episodes, a.generated, None, print)
    work = folder.path / "calib_work"
    report: Dict[str, Any] = {"method": a.method, "episodes": ctx["episodes_desc"],
                              "gates": DEFAULT_GATES.as_dict()}
    if stages:
        paths = quantize_stages(folder, stages, ctx["samples"], a.method, out_dir=work, log=print)
        res = ctx["evaluate"](paths, {s: "int8" for s in stages})
        print("\nINT8 (" + ", ".join(stages) + ") vs FP32\n" + format_table(res))
        verdict = check(res)
        report["int8"] = {"stages": stages, **res, **verdict}
        if not verdict["passed"]:
            print("gate FAILED: " + "; ".join(verdict["reasons"]))
            if not a.no_suggest:
                sug = suggest_mixed(stages, res, lambda ss: ctx["evaluate"](
                    {s: paths[s] for s in ss}, {s: "int8" for s in ss}), log=print)
                print("suggestion: " + sug["text"])
                report["suggestion"] = sug
    if a.fp16:
        from calib.fp16 import write_fp16

        work.mkdir(exist_ok=True)
        paths = {}
        for s in folder.specs:
            paths[s] = work / f"{s}.fp16.onnx"
            write_fp16(folder.path / folder.file_record(s, "fp32").file, paths[s])
        res = ctx["evaluate"](paths, {s: "fp16" for s in folder.specs})
        print("\nFP16 files (calib.fp16) vs FP32\n" + format_table(res))
        report["fp16"] = {**res, **check(res)}
    if a.write_manifest:
        folder.manifest.checks[REPORT_KEY] = json_ready(report)
        folder.write()
        print(f"stored under checks/{REPORT_KEY!r} in {folder.path / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
