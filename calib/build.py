"""The reduced-precision steps of ``export.build`` for SAM2 folders, measured on one recorded FP32 run.

- :func:`calibration` runs the folder kind's workload once through the FP32
  files and records every stage's inputs (:mod:`calib.record`);
- :func:`build_fp16` writes every stage's ``<stage>.fp16.onnx``
  (:mod:`calib.fp16`), measures it (per stage and end to end) and gates it;
- :func:`build_int8` writes Q/DQ ``<stage>.int8.onnx`` files for TensorRT
  (INT8 + FP16, :mod:`calib.quantize`) or dynamic ``<stage>.cpu-int8.onnx``
  files for ONNX Runtime on CPUs (:mod:`calib.dynamic`), measured with the
  other stages at the precision their engines run (FP16 beside Q/DQ, FP32
  beside dynamic INT8).

Each stage's file record says what it was made with; ``measured[variant]``
what was measured on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

from runtime.core.fileio import sha256_file
from runtime.core.folder import FileRecord, ModelFolder, onnx_name
from runtime.sam2.spec import parse_stages
from runtime.errors import UsageError

DEFAULT_GENERATED = 6
# scheme -> (file variant, precision label in reports, log tag)
SCHEMES = {"qdq": ("int8", "int8", "int8"),
           "dynamic": ("cpu-int8", "int8 (dynamic)", "cpu-int8")}
# scheme -> (build option the suggestion names, what to do when no stage passes)
SUGGEST = {"qdq": ("--int8-stages", "build with --precision fp16"),
           "dynamic": ("--cpu-int8-stages", "keep FP32 on the CPU (build without --cpu-int8-stages)")}


def calibration(folder: ModelFolder, calib_dir: Optional[Path], log: Callable[[str], None], *,
                generated: int = DEFAULT_GENERATED, cache_dir: Optional[Path] = None) -> dict:
    """The recorded FP32 run every reduced-precision step of one build measures against."""
    from calib.report import evaluate_setup

    return evaluate_setup(folder, calib_dir, generated, cache_dir, log)


def build_fp16(folder: ModelFolder, ctx: dict, log: Callable[[str], None], gates=None) -> dict:
    """Write and measure every stage's FP16 file; every stage's engine precision becomes ``fp16``.

    Returns the ``manifest.checks["fp16"]`` record (``passed``, table, gates).
    """
    import time

    from calib.fp16 import write_fp16
    from calib.gates import DEFAULT_GATES, check
    from calib.report import format_table, json_ready

    gates = gates or DEFAULT_GATES
    t0 = time.time()
    paths = {}
    for s in folder.specs:
        dst = folder.path / onnx_name(s, "fp16")
        info = write_fp16(folder.path / folder.file_record(s, "fp32").file, dst)
        folder.stage(s).files["fp16"] = FileRecord(dst.name, sha256_file(dst), info)
        folder.stage(s).precision = "fp16"
        paths[s] = dst
        w = info["weights"]
        log(f"[fp16] {s}: wrote {dst.name} ({w['float16'] / max(1, w['float16'] + w['float32']):.1%} of the "
            f"weights FP16; FP32 nodes: {', '.join(f'{k} x{v}' for k, v in info['fp32_nodes'].items()) or 'none'})")
    table = ctx["evaluate"](paths, {s: "fp16" for s in paths})
    text = format_table(table, gates)
    verdict = check(table, gates)
    log(f"[fp16] the FP16 files vs FP32 in ONNX Runtime ({ctx['episodes_desc']}), {time.time() - t0:.0f}s\n" + text)
    for s in paths:
        folder.stage(s).measured["fp16"] = json_ready({k: v for k, v in table["stages"][s].items() if k != "outputs"})
    return json_ready({"table": {k: v for k, v in table.items() if k != "ious"}, "text": text, **verdict,
                       "data": ctx["episodes_desc"], "gates": gates.as_dict()})


def build_int8(folder: ModelFolder, int8_stages: Sequence[str], ctx: dict,
               log: Callable[[str], None], *, method: str = "entropy", gates=None,
               suggest: bool = True, apply_suggestion: bool = False,
               scheme: str = "qdq", reduce_range: bool = False) -> dict:
    """Quantize ``int8_stages`` of ``folder`` (its manifest in memory, still building), measure, gate.

    ``scheme``: ``"qdq"`` (:mod:`calib.quantize`: calibrated Q/DQ graphs
    ``<stage>.int8.onnx`` for TensorRT) records each stage's ``int8`` file and
    sets its precision to ``int8`` (the engine is then built from it);
    ``"dynamic"`` (:mod:`calib.dynamic`: ``<stage>.cpu-int8.onnx`` for ONNX
    Runtime on CPUs, ``reduce_range`` = 7-bit weights for x86 CPUs without
    VNNI) records the ``cpu-int8`` file. Each stage's figures go to its
    ``measured[variant]``. ``ctx`` is :func:`calibration`'s recorded run. For
    ``qdq`` the other stages are measured from their FP16 files when they have
    them (:func:`build_fp16` ran), as their engines will run. With
    ``apply_suggestion`` and a failed gate, the stages the suggestion keeps at
    higher precision lose their INT8 file again (none stays INT8 if no stage
    passes).

    Returns ``{"table": {"stages", "e2e"}, "text", "passed", "failed_stages",
    "reasons", "suggestion", "int8_stages", "kept_int8", "scheme", "episodes",
    "gates", ...}``, JSON-ready, for ``manifest.checks[variant]``.
    """
    from calib.gates import DEFAULT_GATES, check, suggest_mixed
    from calib.report import format_table, json_ready

    if scheme not in SCHEMES:
        raise UsageError(f"unknown INT8 scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    variant, label, tag = SCHEMES[scheme]
    gates = gates or DEFAULT_GATES
    stages = parse_stages(int8_stages)
    if not stages:
        raise UsageError("build_int8: no stage chosen for INT8 (int8_stages is empty)")
    if scheme == "qdq":
        from calib.quantize import quantize_stages

        from calib.quantize import QDQ_OPSET

        paths = quantize_stages(folder, stages, ctx["samples"], method, log=log)
        info = {"method": method, "quantized_ops": ["Conv", "MatMul", "Gemm"], "rest": "fp16 (calib.fp16)",
                "opset": QDQ_OPSET}
    else:
        from calib.dynamic import quantize_dynamic_stages

        paths = quantize_dynamic_stages(folder, stages, log=log, reduce_range=reduce_range)
        info = {"scheme": "dynamic", "reduce_range": bool(reduce_range)}
    for s, p in paths.items():
        folder.stage(s).files[variant] = FileRecord(p.name, sha256_file(p), dict(info))
    rest = ({s: folder.path / folder.stage(s).files["fp16"].file for s in folder.specs
             if s not in stages and "fp16" in folder.stage(s).files} if scheme == "qdq" else {})

    def setting(ss):
        """The variants and labels of one setting: ``ss`` in INT8, the rest as their engines run."""
        others = {s: p for s, p in rest.items() if s not in ss}
        return ({**others, **{s: paths[s] for s in ss}},
                {**{s: "fp16" for s in others}, **{s: label for s in ss}})

    table = ctx["evaluate"](*setting(stages))
    text = format_table(table, gates)
    verdict = check(table, gates)
    log(f"[{tag}] accuracy vs FP32\n" + text)
    suggestion = None
    if not verdict["passed"]:
        log(f"[{tag}] gate FAILED: " + "; ".join(verdict["reasons"]))
        if suggest:
            suggestion = suggest_mixed(
                stages, table, lambda ss: ctx["evaluate"](*setting(ss)), gates, log,
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
