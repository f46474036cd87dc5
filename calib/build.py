"""The INT8 step of ``export.build --precision int8``: :func:`build_int8`."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from runtime.fileio import sha256_file
from runtime.spec import STAGES

DEFAULT_GENERATED = 6
# scheme -> (stage record key, precision label in reports, log tag)
SCHEMES = {"qdq": ("onnx_int8", "int8", "int8"),
           "dynamic": ("onnx_cpu_int8", "int8 (dynamic)", "cpu-int8")}
# scheme -> (build option the suggestion names, what to do when no stage passes)
SUGGEST = {"qdq": ("--int8-stages", "build with --precision fp16"),
           "dynamic": ("--cpu-int8", "keep FP32 on the CPU (build without --cpu-int8)")}


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
               progress: bool = True, scheme: str = "qdq", reduce_range: bool = False) -> dict:
    """Quantize ``int8_stages`` in ``out_dir``, measure, gate.

    ``scheme``: ``"qdq"`` (:mod:`calib.quantize`, calibrated Q/DQ graphs
    ``<stage>.int8.onnx`` for TensorRT) sets ``manifest_stage_records[stage]
    ["onnx_int8"] = {"file", "sha256", "precision": "int8", "method"}`` for
    each quantized stage (export.engines then builds that stage's engine from
    it); ``"dynamic"`` (:mod:`calib.dynamic`, ``<stage>.cpu-int8.onnx`` for
    ONNX Runtime on CPUs) sets ``["onnx_cpu_int8"]`` instead (with
    ``"reduce_range"``: 7-bit weights, for x86 CPUs without VNNI; only that
    scheme reads ``reduce_range``). ``manifest`` is the build's
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
    from calib.report import _json_ready, format_table

    if scheme not in SCHEMES:
        raise ValueError(f"unknown INT8 scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    key, label, tag = SCHEMES[scheme]
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
    if scheme == "qdq":
        from calib.quantize import quantize_stages

        paths = quantize_stages(out_dir, manifest_stage_records, stages, ctx["samples"], method, log=log)
        extra = {"method": method}
    else:
        from calib.dynamic import quantize_dynamic_stages

        paths = quantize_dynamic_stages(out_dir, manifest_stage_records, stages, log=log,
                                        reduce_range=reduce_range)
        extra = {"scheme": "dynamic", "reduce_range": bool(reduce_range)}
    for s, p in paths.items():
        manifest_stage_records[s][key] = {
            "file": p.name, "sha256": sha256_file(p), "precision": "int8", **extra}
    table = ctx["evaluate"](paths, {s: label for s in stages})
    text = format_table(table, gates)
    verdict = check(table, gates)
    log(f"[{tag}] accuracy vs FP32\n" + text)
    suggestion = None
    if not verdict["passed"]:
        log(f"[{tag}] gate FAILED: " + "; ".join(verdict["reasons"]))
        if suggest:
            suggestion = suggest_mixed(
                stages, table, lambda ss: ctx["evaluate"]({s: paths[s] for s in ss},
                                                         {s: label for s in ss}), gates, log,
                *SUGGEST[scheme])
            if suggestion["result"] is not None:
                suggestion["table_text"] = format_table(suggestion["result"], gates)
            log(f"[{tag}] suggestion: " + suggestion["text"])
            if apply_suggestion:
                for s in suggestion["keep_higher_precision"]:
                    manifest_stage_records[s].pop(key, None)
                    paths[s].unlink(missing_ok=True)
    else:
        log(f"[{tag}] gate passed")
    return _json_ready({
        "table": table, "text": text, "passed": verdict["passed"],
        "failed_stages": verdict["failed_stages"], "reasons": verdict["reasons"],
        "suggestion": suggestion, "int8_stages": stages, "scheme": scheme,
        "kept_int8": [s for s in stages if key in manifest_stage_records[s]],
        **({"method": method} if scheme == "qdq" else {"reduce_range": bool(reduce_range)}),
        "episodes": ctx["episodes_desc"], "gates": gates.as_dict(),
    })
