"""Comparing two runs: metrics, runner against runner, and the accuracy gates (one table).

Used by the export parity check (ONNX Runtime vs PyTorch), the FP16/INT8
gates (a reduced-precision file vs the FP32 one), the dense end-to-end
checks, the benchmarks and the device check, so every figure the project
reports is computed by the same functions. NumPy only.

Metrics (``a`` the tested array, ``b`` the reference):

- relative L2 ``|a - b| / |b|`` (0 when both are zero),
- max abs ``max |a - b|``,
- cosine similarity (1 when both are zero, 0 when one is),
- mask IoU of two boolean masks (1 when both are empty).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    """``||a - b|| / ||b||`` in float64 (``||a - b||`` when ``b`` is zero)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    denom = np.linalg.norm(b)
    diff = np.linalg.norm(a - b)
    return float(diff / denom) if denom else float(diff)


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b))) if b.size else 0.0


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def compare_arrays(got: np.ndarray, ref: np.ndarray) -> Dict[str, float]:
    """``{"rel_l2", "max_abs", "cosine"}`` of one output; shapes must agree."""
    got, ref = np.asarray(got), np.asarray(ref)
    if got.shape != ref.shape:
        raise AssertionError(f"shape {got.shape} != reference {ref.shape}")
    return {"rel_l2": rel_l2(got, ref), "max_abs": max_abs(got, ref), "cosine": cosine(got, ref)}


def compare_outputs(got: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray]) -> Dict[str, Dict[str, float]]:
    """Per-output :func:`compare_arrays` over the reference's outputs."""
    out = {}
    for name, r in ref.items():
        try:
            out[name] = compare_arrays(got[name], r)
        except AssertionError as e:
            raise AssertionError(f"output {name!r}: {e}") from None
    return out


def worst(per_output: Iterable[Mapping[str, float]]) -> Dict[str, float]:
    """The worst of each metric over outputs/samples (max rel L2 and max abs, min cosine)."""
    items = list(per_output)
    return {"rel_l2": max((o["rel_l2"] for o in items), default=0.0),
            "max_abs": max((o["max_abs"] for o in items), default=0.0),
            "cosine": min((o["cosine"] for o in items), default=1.0)}


def compare_runners(ref_runner, test_runner, samples: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Run ``samples`` (feed dicts) through both runners: worst metrics overall and per output."""
    outs: Dict[str, List[Dict[str, float]]] = {}
    for feeds in samples:
        a, b = ref_runner.infer(feeds), test_runner.infer(feeds)
        for k in a:
            m = compare_arrays(test_runner.to_host(b[k]), ref_runner.to_host(a[k]))
            outs.setdefault(k, []).append(m)
    per = {k: worst(v) for k, v in outs.items()}
    return {**worst(per.values()), "outputs": per, "samples": len(samples)}


# ------------------------------------------------------------------- gates
@dataclass(frozen=True)
class StageGate:
    """Per-stage gate: every output's worst relative L2 at most ``max_rel_l2`` and/or cosine at least ``min_cosine``."""

    max_rel_l2: Optional[float] = None
    min_cosine: Optional[float] = None

    def failures(self, m: Mapping[str, float]) -> List[str]:
        bad = []
        if self.max_rel_l2 is not None and m["rel_l2"] > self.max_rel_l2:
            bad.append(f"rel L2 {m['rel_l2']:.2e} > {self.max_rel_l2:g}")
        if self.min_cosine is not None and m["cosine"] < self.min_cosine:
            bad.append(f"cosine {m['cosine']:.5f} < {self.min_cosine}")
        return bad

    def as_dict(self) -> Dict[str, float]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class MaskGate:
    """End-to-end gate on mask IoU against the FP32 pipeline: mean and worst over targets."""

    min_mean_iou: float
    min_worst_iou: float

    def failures(self, mean: float, low: float) -> List[str]:
        """Reasons the mean / worst IoU miss the gate (empty when it passes)."""
        if mean >= self.min_mean_iou and low >= self.min_worst_iou:
            return []
        return [f"mean IoU {mean:.4f} (gate {self.min_mean_iou}), worst {low:.4f} (gate {self.min_worst_iou})"]

    def as_dict(self) -> Dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class ProbabilityGate:
    """Dense models: probability-map max abs error at most ``max_abs`` and mask IoU at least ``min_iou``."""

    max_abs: float
    min_iou: float

    def failures(self, prob_max_abs: float, iou: float) -> List[str]:
        bad = []
        if prob_max_abs > self.max_abs:
            bad.append(f"probability max abs {prob_max_abs:.2e} > {self.max_abs}")
        if iou < self.min_iou:
            bad.append(f"mask IoU {iou:.4f} < {self.min_iou}")
        return bad

    def as_dict(self) -> Dict[str, float]:
        return asdict(self)


# The one table of gates (where each is applied: export parity, precision builds, dense checks).
FP32_PARITY = StageGate(max_rel_l2=1e-5)          # every stage, ONNX Runtime vs PyTorch
EDGE_PARITY = StageGate(max_rel_l2=1e-6)          # an edge graph vs its NumPy reference (exact up to rounding)
# An edge graph's bool outputs (masks) on two backends: rel L2 of 0/1 maps is sqrt(flipped / foreground),
# so 1e-2 lets 1e-4 of the foreground flip where logits rounded to either side of the threshold.
EDGE_MASK_PARITY = StageGate(max_rel_l2=1e-2)
# FP32 TensorRT engines (TF32 allowed: 10-bit mantissa products) vs the FP32 ONNX file on ONNX Runtime.
ENGINE_FP32_STAGE = StageGate(max_rel_l2=1e-2, min_cosine=0.9999)
ENGINE_FP32_END_TO_END = MaskGate(min_mean_iou=0.99, min_worst_iou=0.97)
REDUCED_STAGE = StageGate(min_cosine=0.99)        # an FP16/INT8 stage vs its FP32 file
REDUCED_END_TO_END = MaskGate(min_mean_iou=0.95, min_worst_iou=0.90)  # masks vs the FP32 pipeline
DENSE_FP16 = ProbabilityGate(max_abs=0.02, min_iou=0.98)              # dense maps, FP16 vs FP32
FEATURES_FP16 = StageGate(max_rel_l2=1e-2)        # feature engines, FP16 vs FP32
