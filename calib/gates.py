"""Accuracy gates for reduced-precision stages, and the mixed setting to fall back to.

Default gate (vs the FP32 ONNX pipeline, on the calibration episodes):

- end to end: mean mask IoU >= 0.95 and worst mask IoU >= 0.90 over all targets;
- per stage: cosine similarity >= 0.99 for every output of every reduced-precision
  stage, on every recorded input (the minimum counts).

Per-stage cosine catches a broken stage even when the masks of the episodes
happen to survive; the IoU gate catches error that accumulates across
stages (an INT8 encoder feeding an INT8 memory path). Relative L2 is reported
but not gated (cosine is the scale-free version of the same check).

The gate values live in :mod:`runtime.core.compare` (the project's one table).
When the gate fails, :func:`suggest_mixed` looks for the largest set of INT8
stages that passes: first it drops the stages that fail their own cosine
gate, then, while the end-to-end gate still fails, the remaining INT8 stage
with the lowest cosine. The dropped stages are to stay at FP16 (or FP32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

from runtime.core.compare import REDUCED_END_TO_END, REDUCED_STAGE, MaskGate, StageGate


@dataclass(frozen=True)
class Gates:
    """The per-stage and end-to-end gates one reduced-precision setting must pass
    (defaults: :data:`runtime.core.compare.REDUCED_STAGE` and ``REDUCED_END_TO_END``)."""

    stage: StageGate = REDUCED_STAGE
    e2e: MaskGate = REDUCED_END_TO_END

    def as_dict(self) -> Dict[str, Dict[str, float]]:
        return {"stage": self.stage.as_dict(), "end_to_end": self.e2e.as_dict()}


DEFAULT_GATES = Gates()


def check(result: dict, gates: Gates = DEFAULT_GATES) -> dict:
    """``{"passed", "failed_stages", "reasons"}`` for one evaluated precision setting.

    ``result`` is :func:`calib.report.evaluate`'s output. ``failed_stages``
    names the reduced-precision stages below their stage gate; when only the
    end-to-end gate fails, it names the reduced stage with the lowest cosine.
    """
    reasons: List[str] = []
    failed: List[str] = []
    reduced = {s: r for s, r in result["stages"].items() if r["precision"] != "fp32"}
    for s, r in reduced.items():
        bad = gates.stage.failures(r)
        if bad:
            failed.append(s)
            reasons.append(f"{s} ({r['precision']}): " + ", ".join(bad))
    e2e_bad = gates.e2e.failures(result["e2e"]["mean_iou"], result["e2e"]["worst_iou"])
    if e2e_bad:
        reasons.append("end to end: " + "; ".join(e2e_bad))
        if not failed and reduced:
            failed.append(min(reduced, key=lambda s: reduced[s]["cosine"]))
    return {"passed": not reasons, "failed_stages": failed, "reasons": reasons}


def suggest_mixed(int8_stages: Sequence[str], first: dict,
                  evaluate: Callable[[List[str]], dict], gates: Gates = DEFAULT_GATES,
                  log: Callable[[str], None] = print, flag: str = "--int8-stages",
                  fallback: str = "build with --precision fp16") -> dict:
    """The largest passing INT8 subset, searched greedily from the failing result ``first``.

    ``evaluate(stages)`` evaluates a setting with ``stages`` at INT8 and the
    rest at FP32. ``flag`` / ``fallback``: the build option the suggestion
    names, and what to do when no stage passes. Returns ``{"int8_stages", "keep_higher_precision", "result",
    "passed", "text"}``.
    """
    verdict = check(first, gates)
    current = [s for s in int8_stages if s not in verdict["failed_stages"]]
    result: Optional[dict] = None
    while current:
        log(f"[int8] trying INT8 for {current} (others fp16/fp32) ...")
        result = evaluate(current)
        v = check(result, gates)
        if v["passed"]:
            break
        current = [s for s in current if s not in v["failed_stages"]]
        result = None
    keep = [s for s in int8_stages if s not in current]
    if current:
        text = (f"keep {', '.join(keep)} at fp16/fp32 and quantize only {', '.join(current)}: "
                f"this passes the gate (e.g. {flag} {','.join(current)})")
    else:
        text = (f"no INT8 stage passes the gate on these episodes: {fallback} "
                "(or check that the calibration episodes represent the deployment data)")
    return {"int8_stages": current, "keep_higher_precision": keep, "result": result,
            "passed": bool(current), "text": text}
