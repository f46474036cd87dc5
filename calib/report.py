"""Accuracy of reduced-precision stages vs FP32: per stage and end to end.

Per stage: every recorded input of the stage (see :mod:`calib.record`) goes
through the FP32 ONNX and the variant; for each output, relative L2
``|a-b|/|a|`` (worst = max) and cosine similarity (worst = min) are taken.
End to end: a :class:`FewShotSegmenter` with the variant runners swapped in
segments every target of every episode; its masks are compared with the FP32
masks (IoU; two empty masks count as 1); mean and worst are reported.

CLI::

    python -m calib.report --engines DIR [--episodes DIR | --generated N]
        [--int8-stages image_encoder,mask_decoder] [--method entropy] [--fp16]
        [--write-manifest]

INT8/FP16 files made by the CLI go to ``DIR/calib_work/`` (the folder's
verified files are not touched); ``--write-manifest`` stores the table in
``DIR/manifest.json`` under ``"calibration"``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from runtime.spec import STAGES

REPORT_KEY = "calibration"


def _compare(a: np.ndarray, b: np.ndarray):
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    rel = float(np.linalg.norm(a - b) / na) if na > 0 else float(np.linalg.norm(b) > 0)
    if na == 0 and nb == 0:
        cos = 1.0
    elif na == 0 or nb == 0:
        cos = 0.0
    else:
        cos = float(np.dot(a, b) / (na * nb))
    return rel, cos


def stage_metrics(ref_runner, test_runner, samples: Sequence[Mapping[str, np.ndarray]]) -> dict:
    """Worst relative L2 and cosine of ``test_runner`` vs ``ref_runner`` over ``samples``."""
    outs: Dict[str, Dict[str, float]] = {}
    for feeds in samples:
        a, b = ref_runner.infer(feeds), test_runner.infer(feeds)
        for k in a:
            rel, cos = _compare(ref_runner.to_host(a[k]), test_runner.to_host(b[k]))
            o = outs.setdefault(k, {"rel_l2": 0.0, "cosine": 1.0})
            o["rel_l2"] = max(o["rel_l2"], rel)
            o["cosine"] = min(o["cosine"], cos)
    return {"rel_l2": max((o["rel_l2"] for o in outs.values()), default=0.0),
            "cosine": min((o["cosine"] for o in outs.values()), default=1.0),
            "outputs": outs, "samples": len(samples)}


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def evaluate(engine_dir: Path, manifest: dict, episodes, samples, fp32_logits: Sequence[np.ndarray],
             variants: Mapping[str, Any], precisions: Mapping[str, str],
             ref_runners: Optional[Mapping[str, Any]] = None, progress: bool = False) -> dict:
    """Per-stage and end-to-end accuracy of one precision setting vs FP32.

    ``variants[stage]``: an ONNX path or an active runner for each reduced
    stage; ``precisions[stage]``: its label ("int8", "fp16 (emulated)", ...).
    """
    from calib.record import _progress, open_segmenter, run_episode
    from runtime.backends.onnxruntime import OnnxRuntimeStageRunner
    from runtime.manifest import manifest_specs

    specs = manifest_specs(manifest)
    runners = {}
    for s, v in variants.items():
        runners[s] = v if hasattr(v, "infer") else OnnxRuntimeStageRunner(
            specs[s], v, 0, ["CPUExecutionProvider"]).activate()
    stages: Dict[str, dict] = {}
    for s in STAGES:
        if s not in runners:
            stages[s] = {"precision": "fp32", "rel_l2": 0.0, "cosine": 1.0}
            continue
        ref = (ref_runners or {}).get(s) or OnnxRuntimeStageRunner(
            specs[s], Path(engine_dir) / manifest["stages"][s]["onnx"]["file"], 0,
            ["CPUExecutionProvider"]).activate()
        m = stage_metrics(ref, runners[s], samples[s])
        stages[s] = {"precision": precisions.get(s, "reduced"), **m}
    seg = open_segmenter(engine_dir, manifest, runner_overrides=runners)
    ious: List[float] = []
    i = 0
    for ep in _progress(episodes, len(episodes), "calib: end to end", progress):
        for logits in run_episode(seg, ep):
            ious.append(mask_iou(logits > 0, fp32_logits[i] > 0))
            i += 1
    e2e = {"mean_iou": float(np.mean(ious)), "worst_iou": float(np.min(ious)), "targets": len(ious)}
    return {"stages": stages, "e2e": e2e}


def format_table(result: dict, gates=None) -> str:
    """A plain-text table of one :func:`evaluate` result."""
    from calib.gates import DEFAULT_GATES

    g = gates or DEFAULT_GATES
    lines = [f"{'stage':<18} {'precision':<18} {'rel L2 (max)':>13} {'cosine (min)':>13}  gate",
             "-" * 72]
    for s, r in result["stages"].items():
        ok = "-" if r["precision"] == "fp32" else ("ok" if r["cosine"] >= g.min_stage_cosine else "FAIL")
        lines.append(f"{s:<18} {r['precision']:<18} {r['rel_l2']:>13.3e} {r['cosine']:>13.5f}  {ok}")
    e = result["e2e"]
    ok = e["mean_iou"] >= g.min_mean_iou and e["worst_iou"] >= g.min_worst_iou
    lines.append("-" * 72)
    lines.append(f"end to end mask IoU vs FP32 over {e['targets']} targets: mean {e['mean_iou']:.4f} "
                 f"(gate {g.min_mean_iou}), worst {e['worst_iou']:.4f} (gate {g.min_worst_iou})"
                 f"  {'ok' if ok else 'FAIL'}")
    return "\n".join(lines)


def _json_ready(obj):
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def store_report(manifest: dict, report: dict, key: str = REPORT_KEY) -> dict:
    """Put ``report`` (JSON-ready copy) into ``manifest[key]``; returns the manifest."""
    manifest[key] = _json_ready(report)
    return manifest


def store_report_in_folder(engine_dir: str | Path, report: dict, key: str = REPORT_KEY) -> None:
    """Rewrite ``engine_dir/manifest.json`` (atomically) with ``report`` under ``key``."""
    from calib.record import read_manifest_loose
    from runtime.fileio import write_json_atomic
    from runtime.manifest import MANIFEST_NAME

    m = read_manifest_loose(Path(engine_dir))
    write_json_atomic(Path(engine_dir) / MANIFEST_NAME, store_report(m, report, key))


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m calib.report", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--engines", type=Path, required=True, help="engines folder (export.build)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--episodes", type=Path, help="calibration episodes folder (calib/episodes.py)")
    src.add_argument("--generated", type=int, default=6, help="use N generated synthetic episodes")
    p.add_argument("--int8-stages", default="image_encoder",
                   help="comma-separated stages to quantize ('all' for every stage; '' for none)")
    p.add_argument("--method", default="entropy", help="calibration: entropy, minmax or percentile")
    p.add_argument("--fp16", action="store_true",
                   help="also measure every stage at FP16 (norms in FP32) in ONNX Runtime CPU")
    p.add_argument("--no-suggest", action="store_true", help="do not search a passing mixed setting")
    p.add_argument("--write-manifest", action="store_true", help="store the table in manifest.json")
    a = p.parse_args(argv)

    from calib.build import evaluate_setup, parse_stages
    from calib.episodes import CalibrationDataError
    from calib.gates import DEFAULT_GATES, check, suggest_mixed
    from calib.quantize import quantize_stages

    try:
        stages = parse_stages(a.int8_stages)
        ctx = evaluate_setup(a.engines, None, a.episodes, a.generated, None, print)
    except (CalibrationDataError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    work = a.engines / "calib_work"
    report: Dict[str, Any] = {"method": a.method, "episodes": ctx["episodes_desc"],
                              "gates": DEFAULT_GATES.as_dict()}
    if stages:
        paths = quantize_stages(a.engines, ctx["manifest"]["stages"], stages, ctx["samples"],
                                a.method, out_dir=work, log=print)
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
        from calib.fp16 import fp16_runner
        from runtime.manifest import manifest_specs

        specs = manifest_specs(ctx["manifest"])
        runners = {s: fp16_runner(specs[s], a.engines / ctx["manifest"]["stages"][s]["onnx"]["file"],
                                  work, mode="emulated") for s in STAGES}
        res = ctx["evaluate"](runners, {s: "fp16 (" + runners[s].fp16_mode.split(" ")[0] + ")"
                                        for s in STAGES})
        print("\nFP16 (all stages; LayerNorm/reductions FP32) vs FP32\n" + format_table(res))
        report["fp16"] = {**res, **check(res)}
    if a.write_manifest:
        store_report_in_folder(a.engines, report)
        print(f"stored under '{REPORT_KEY}' in {a.engines / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
