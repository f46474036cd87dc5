"""Work per stage, counted at export with ``torch.utils.flop_counter.FlopCounterMode``.

Counted on the PyTorch sub-networks of :func:`export.subnets.build_subnets`
on every benchmark case (:mod:`bench.cases`) and stored in the manifest, so the
benchmarks run where only the runtime is installed. On the CPU,
``F.scaled_dot_product_attention`` dispatches to
``aten._scaled_dot_product_flash_attention_for_cpu``, which FlopCounterMode
does not count (it reports 0 for it): the counter would miss ~2/3 of memory
attention's work. A custom mapping adds ``2*B*H*Nq*Nk*(d + dv)`` for it.
"""

from __future__ import annotations

from typing import Dict, Mapping

import torch
from torch.utils.flop_counter import FlopCounterMode

from export.onnx_export import example_feeds
from runtime.core.spec import StageSpec


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    b, h, nq, d = query_shape
    nk, dv = key_shape[-2], value_shape[-1]
    return 2 * b * h * nq * nk * (d + dv)


def _custom_mapping():
    m = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        m[op] = _sdpa_cpu_flops  # keyed by overload packet, as FlopCounterMode looks it up
    return m


@torch.no_grad()
def count_flops(net: torch.nn.Module, spec: StageSpec, axes: Mapping[str, int]) -> int:
    """FLOPs (multiply-add = 2) of one call of ``net`` on inputs of ``spec`` at ``axes``."""
    feeds = example_feeds(spec, axes)
    args = [torch.from_numpy(feeds[n]) for n in spec.input_names]
    with FlopCounterMode(display=False, custom_mapping=_custom_mapping()) as fc:
        net(*args)
    return int(fc.get_total_flops())


def stage_flops(nets: Mapping[str, torch.nn.Module], specs: Mapping[str, StageSpec],
                cases: Mapping[str, Mapping[str, int]]) -> Dict[str, int]:
    """``{case_name: flops}`` where ``cases[case_name]`` is ``{"stage": name, **axes}``
    (only the cases whose stage is in ``nets``)."""
    out = {}
    for name, case in cases.items():
        if case["stage"] not in nets:
            continue
        axes = {k: v for k, v in case.items() if k != "stage"}
        out[name] = count_flops(nets[case["stage"]], specs[case["stage"]], axes)
    return out
