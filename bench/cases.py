"""What the benchmarks time, named once: stage cases and the key their FLOPs are stored under.

A case is one stage on one set of dynamic-axis sizes (``{"stage": name, **axes}``).
``export.build`` counts the FLOPs of every case a benchmark can ask for and
stores them in the manifest under :func:`case_key`, so the benchmarks need no
PyTorch on the device. Torch-free.
"""

from __future__ import annotations

from typing import Dict, List, Mapping

from runtime.core.spec import StageSpec


def case_key(stage: str, axes: Mapping[str, int]) -> str:
    """``"memory_attention num_mem=5 num_ptr=5"``: a stage and its axis sizes, sorted."""
    return " ".join([stage] + [f"{k}={int(v)}" for k, v in sorted(axes.items())])


def clamp_axes(case: Mapping[str, int], specs: Mapping[str, StageSpec]) -> Dict[str, int]:
    """The case's axis sizes clamped into the stage's ranges (what the engines admit)."""
    axes = {k: int(v) for k, v in case.items() if k != "stage"}
    rng = specs[case["stage"]].axis_ranges
    for k, v in list(axes.items()):
        if k in rng:
            axes[k] = min(max(v, rng[k][0]), rng[k][2])
    return axes


def sam2_cases(shots: List[int]) -> Dict[str, dict]:
    """The SAM2 stage cases of ``bench.throughput``: batch 1, one object, one prompt point, and
    memory attention with k memories and k pointers for every k in ``shots``."""
    cases = {"image_encoder": {"stage": "image_encoder", "batch": 1},
             "memory_encoder": {"stage": "memory_encoder", "batch": 1},
             "mask_decoder": {"stage": "mask_decoder", "objects": 1, "num_points": 1}}
    for k in shots:
        cases[f"memory_attention@{k}"] = {"stage": "memory_attention", "objects": 1, "num_mem": k, "num_ptr": k}
    return cases


def sam2_counted_cases(specs: Mapping[str, StageSpec]) -> Dict[str, dict]:
    """Every SAM2 case a benchmark can reach (any k up to the memory profile's maximum),
    as ``{case_key: {"stage": ..., **axes}}``: what ``export.build`` counts."""
    k_max = specs["memory_attention"].axis_ranges["num_mem"][2]
    out = {}
    for case in sam2_cases(list(range(1, k_max + 1))).values():
        axes = clamp_axes(case, specs)
        out[case_key(case["stage"], axes)] = {"stage": case["stage"], **axes}
    return out


def batch1_cases(specs: Mapping[str, StageSpec]) -> Dict[str, dict]:
    """One batch-1 case per stage (the dense models' parts)."""
    return {case_key(n, {"batch": 1}): {"stage": n, "batch": 1} for n in specs}
