"""The INT8 step of ``export.build --precision int8``: :func:`build_int8`."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from runtime.fileio import sha256_file
from runtime.spec import STAGES

DEFAULT_GENERATED = 6


def parse_stages(text) -> List[str]:
    """``"a,b"`` / list / ``"all"`` -> validated stage list (order of STAGES)."""
    if isinstance(text, str):
        items = [s.strip() for s in text.split(",") if s.strip()]
    else:
        items = list(text or [])
    if items == ["all"]:
        return list(STAGES)
    bad = [s for s in items if s not in STAGES]
    if bad:
        raise ValueError(f"unknown stage(s) {bad} for INT8; choose from {', '.join(STAGES)} or 'all'")
    return [s for s in STAGES if s in items]


def evaluate_setup(out_dir: Path, manifest: Optional[dict], calib_dir: Optional[Path],
                   generated: int, cache_dir: Optional[Path], log, progress: bool = True) -> dict:
    """Episodes + recorded FP32 inputs + an ``evaluate(variants, precisions)`` closure."""
    from calib.episodes import generate_episodes, load_episodes
    from calib.record import read_manifest_loose, record_stage_inputs
    from calib.report import evaluate

    out_dir = Path(out_dir)
    manifest = manifest if manifest is not None else read_manifest_loose(out_dir)
    if calib_dir is not None:
        episodes = load_episodes(calib_dir)
        desc = f"{len(episodes)} episodes from {calib_dir}"
    else:
        size = int(manifest["model"]["image_size"])
        episodes = generate_episodes(generated, size=size)
        desc = f"{len(episodes)} generated synthetic episodes (not representative of real data)"
    log(f"[calib] {desc}")
    samples, fp32_logits = record_stage_inputs(out_dir, episodes, cache_dir, manifest, log, progress)

    def run(variants, precisions):
        return evaluate(out_dir, manifest, episodes, samples, fp32_logits, variants, precisions)

    return {"manifest": manifest, "episodes": episodes, "episodes_desc": desc,
            "samples": samples, "fp32_logits": fp32_logits, "evaluate": run}


def build_int8(out_dir: Path, manifest_stage_records: dict, int8_stages: Sequence[str],
               calib_dir: Optional[Path], log: Callable[[str], None], *,
               manifest: Optional[dict] = None, method: str = "entropy",
               generated: int = DEFAULT_GENERATED, gates=None, cache_dir: Optional[Path] = None,
               suggest: bool = True, apply_suggestion: bool = False,
               progress: bool = True) -> dict:
    """Quantize ``int8_stages`` to ``<stage>.int8.onnx`` in ``out_dir``, measure, gate.

    Sets ``manifest_stage_records[stage]["onnx_int8"] = {"file", "sha256",
    "precision": "int8", "method"}`` for each quantized stage (export.engines
    then builds that stage's engine from it). ``manifest`` is the build's
    manifest dict (needs ``model``, ``model_config``, ``axis_ranges`` and
    ``stages``); default: ``out_dir/manifest.json``. ``calib_dir=None``:
    ``generated`` synthetic episodes. With ``apply_suggestion`` and a failed
    gate, ``onnx_int8`` is removed again from the stages the suggestion keeps
    at higher precision (none stays INT8 if no stage passes).

    Returns ``{"table": {"stages": {...}, "e2e": {...}}, "text": str,
    "passed": bool, "failed_stages": [...], "reasons": [...],
    "suggestion": None | {"int8_stages", "keep_higher_precision", "text", ...},
    "int8_stages": [...], "method": str, "episodes": str, "gates": {...}}``,
    JSON-ready, for the manifest (e.g. ``manifest["calibration"] = result``).
    """
    from calib.gates import DEFAULT_GATES, check, suggest_mixed
    from calib.quantize import quantize_stages
    from calib.report import _json_ready, format_table

    gates = gates or DEFAULT_GATES
    stages = parse_stages(int8_stages)
    if not stages:
        raise ValueError("build_int8: no stage chosen for INT8 (int8_stages is empty)")
    out_dir = Path(out_dir)
    if manifest is None:
        from calib.record import read_manifest_loose

        manifest = dict(read_manifest_loose(out_dir))
    manifest = dict(manifest, stages=manifest_stage_records)
    ctx = evaluate_setup(out_dir, manifest, calib_dir, generated, cache_dir, log, progress)
    paths = quantize_stages(out_dir, manifest_stage_records, stages, ctx["samples"], method, log=log)
    for s, p in paths.items():
        manifest_stage_records[s]["onnx_int8"] = {
            "file": p.name, "sha256": sha256_file(p), "precision": "int8", "method": method}
    table = ctx["evaluate"](paths, {s: "int8" for s in stages})
    text = format_table(table, gates)
    verdict = check(table, gates)
    log("[int8] accuracy vs FP32\n" + text)
    suggestion = None
    if not verdict["passed"]:
        log("[int8] gate FAILED: " + "; ".join(verdict["reasons"]))
        if suggest:
            suggestion = suggest_mixed(
                stages, table, lambda ss: ctx["evaluate"]({s: paths[s] for s in ss},
                                                         {s: "int8" for s in ss}), gates, log)
            if suggestion["result"] is not None:
                suggestion["table_text"] = format_table(suggestion["result"], gates)
            log("[int8] suggestion: " + suggestion["text"])
            if apply_suggestion:
                for s in suggestion["keep_higher_precision"]:
                    manifest_stage_records[s].pop("onnx_int8", None)
    else:
        log("[int8] gate passed")
    return _json_ready({
        "table": table, "text": text, "passed": verdict["passed"],
        "failed_stages": verdict["failed_stages"], "reasons": verdict["reasons"],
        "suggestion": suggestion, "int8_stages": stages, "method": method,
        "episodes": ctx["episodes_desc"], "gates": gates.as_dict(),
    })
