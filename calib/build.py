"""The INT8 steps of ``export.build``: :func:`build_int8` (Q/DQ for TensorRT, dynamic for ONNX Runtime on CPUs)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

from runtime.core.fileio import sha256_file
from runtime.core.folder import FileRecord, ModelFolder
from runtime.sam2.spec import parse_stages
from runtime.errors import UsageError

DEFAULT_GENERATED = 6
# scheme -> (file variant, precision label in reports, log tag)
SCHEMES = {"qdq": ("int8", "int8", "int8"),
           "dynamic": ("cpu-int8", "int8 (dynamic)", "cpu-int8")}
# scheme -> (build option the suggestion names, what to do when no stage passes)
SUGGEST = {"qdq": ("--int8-stages", "build with --precision fp16"),
           "dynamic": ("--cpu-int8-stages", "keep FP32 on the CPU (build without --cpu-int8-stages)")}


def build_int8(folder: ModelFolder, int8_stages: Sequence[str], calib_dir: Optional[Path],
               log: Callable[[str], None], *, method: str = "entropy",
               generated: int = DEFAULT_GENERATED, gates=None, cache_dir: Optional[Path] = None,
               suggest: bool = True, apply_suggestion: bool = False,
               progress: bool = True, scheme: str = "qdq", reduce_range: bool = False) -> dict:
    """Quantize ``int8_stages`` of ``folder`` (its manifest in memory, still building), measure, gate.

    ``scheme``: ``"qdq"`` (:mod:`calib.quantize`: calibrated Q/DQ graphs
    ``<stage>.int8.onnx`` for TensorRT) records each stage's ``int8`` file and
    sets its precision to ``int8`` (the engine is then built from it);
    ``"dynamic"`` (:mod:`calib.dynamic`: ``<stage>.cpu-int8.onnx`` for ONNX
    Runtime on CPUs, ``reduce_range`` = 7-bit weights for x86 CPUs without
    VNNI) records the ``cpu-int8`` file. Each stage's figures go to its
    ``measured[variant]``. ``calib_dir=None``: ``generated`` synthetic
    episodes. With ``apply_suggestion`` and a failed gate, the stages the
    suggestion keeps at higher precision lose their INT8 file again (none
    stays INT8 if no stage passes).

    Returns ``{"table": {"stages", "e2e"}, "text", "passed", "failed_stages",
    "reasons", "suggestion", "int8_stages", "kept_int8", "scheme", "episodes",
    "gates", ...}``, JSON-ready, for ``manifest.checks[variant]``.
    """
    from calib.gates import DEFAULT_GATES, check, suggest_mixed
    from calib.report import evaluate_setup, format_table, json_ready

    if scheme not in SCHEMES:
        raise UsageError(f"unknown INT8 scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    variant, label, tag = SCHEMES[scheme]
    gates = gates or DEFAULT_GATES
    stages = parse_stages(int8_stages)
    if not stages:
        raise UsageError("build_int8: no stage chosen for INT8 (int8_stages is empty)")
    ctx = evaluate_setup(folder, calib_dir, generated, cache_dir, log, progress)
    if scheme == "qdq":
        from calib.quantize import quantize_stages

        paths = quantize_stages(folder, stages, ctx["samples"], method, log=log)
        info = {"method": method}
    else:
        from calib.dynamic import quantize_dynamic_stages

        paths = quantize_dynamic_stages(folder, stages, log=log, reduce_range=reduce_range)
        info = {"scheme": "dynamic", "reduce_range": bool(reduce_range)}
    for s, p in paths.items():
        folder.stage(s).files[variant] = FileRecord(p.name, sha256_file(p), dict(info))
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
                    folder.stage(s).files.pop(variant, None)
                    paths[s].unlink(missing_ok=True)
    else:
        log(f"[{tag}] gate passed")
    kept = [s for s in stages if variant in folder.stage(s).files]
    for s in stages:
        folder.stage(s).measured[variant] = json_ready({k: v for k, v in table["stages"][s].items()
                                                        if k != "outputs"})
        if scheme == "qdq" and s in kept:
            folder.stage(s).precision = "int8"
    return json_ready({
        "table": {k: v for k, v in table.items() if k != "ious"}, "text": text, "passed": verdict["passed"],
        "failed_stages": verdict["failed_stages"], "reasons": verdict["reasons"],
        "suggestion": suggestion, "int8_stages": stages, "scheme": scheme, "kept_int8": kept,
        **({"method": method} if scheme == "qdq" else {"reduce_range": bool(reduce_range)}),
        "episodes": ctx["episodes_desc"], "gates": gates.as_dict(),
    })
