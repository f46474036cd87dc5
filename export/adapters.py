"""AdaptFormer adapters in Hiera's last stages (the SANSA method).

One adapter per ``MultiScaleBlock`` of the chosen stages. In the block::

    x = shortcut + attn(norm1(x))
    x = x + mlp(norm2(x)) + adapter(x)

with ``adapter = LayerNorm(dim_out) -> Linear(dim_out, b) -> ReLU ->
Linear(b, dim_out) -> * scale`` and ``b = int(dim_in * channel_factor)``.

Parameter names are SANSA's (``models/sansa/adapter.py`` and its Hiera
block): ``image_encoder.trunk.blocks.{i}.adapter.{adapter_layer_norm_before,
down_proj,up_proj}``, so SANSA's checkpoints load key for key once their
``sam.`` prefix is stripped. The exported encoder contains these layers
("folded in"): :func:`fold_adapter_scale` moves the constant scale into
``up_proj`` so no separate multiply runs.
"""

from __future__ import annotations

import re
import types
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from runtime.errors import UsageError

ADAPTER_ATTR = "adapter"
DEFAULT_STAGES = (2, 3)
DEFAULT_SCALE = 0.1
DEFAULT_CHANNEL_FACTOR = 0.3
# SANSA's released adapters: 0.3 (strict few-shot), 0.8 (generalist / universal).
KNOWN_CHANNEL_FACTORS = (0.3, 0.8)


@dataclass(frozen=True)
class AdapterConfig:
    """Where the adapters go (0-based Hiera stages) and how wide they are."""

    stages: Tuple[int, ...] = DEFAULT_STAGES
    channel_factor: float = DEFAULT_CHANNEL_FACTOR


class Adapter(nn.Module):
    """AdaptFormer bottleneck: [..., dim_out] -> [..., dim_out]."""

    def __init__(self, dim_out: int, width: int, scale: float = DEFAULT_SCALE):
        super().__init__()
        self.adapter_layer_norm_before = nn.LayerNorm(dim_out)
        self.down_proj = nn.Linear(dim_out, width)
        self.non_linear_func = nn.ReLU()
        self.up_proj = nn.Linear(width, dim_out)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.adapter_layer_norm_before(x)
        x = self.non_linear_func(self.down_proj(x))
        x = self.up_proj(x)
        return x * self.scale if self.scale != 1.0 else x


def _block_forward_with_adapter(self, x: torch.Tensor) -> torch.Tensor:
    """``MultiScaleBlock.forward`` of sam2 1.1.0 with the adapter branch added."""
    from sam2.modeling.backbones.utils import window_partition, window_unpartition
    from sam2.modeling.backbones.hieradet import do_pool

    shortcut = x  # B, H, W, C
    x = self.norm1(x)
    if self.dim != self.dim_out:
        shortcut = do_pool(self.proj(x), self.pool)
    window_size = self.window_size
    if window_size > 0:
        H, W = x.shape[1], x.shape[2]
        x, pad_hw = window_partition(x, window_size)
    x = self.attn(x)
    if self.q_stride:
        window_size = self.window_size // self.q_stride[0]
        H, W = shortcut.shape[1:3]
        pad_h = (window_size - H % window_size) % window_size
        pad_w = (window_size - W % window_size) % window_size
        pad_hw = (H + pad_h, W + pad_w)
    if self.window_size > 0:
        x = window_unpartition(x, window_size, pad_hw, (H, W))
    x = shortcut + self.drop_path(x)
    x = x + self.drop_path(self.mlp(self.norm2(x))) + getattr(self, ADAPTER_ATTR)(x)
    return x


def stage_block_indices(trunk: nn.Module, stages: Sequence[int]) -> List[int]:
    """Indices into ``trunk.blocks`` of the blocks in the given 0-based stages."""
    ends = list(trunk.stage_ends)
    starts = [0] + [e + 1 for e in ends[:-1]]
    bad = [s for s in stages if not 0 <= s < len(ends)]
    if bad:
        raise UsageError(f"adapter stages {bad} out of range; Hiera has stages 0..{len(ends)-1}")
    return [i for s in stages for i in range(starts[s], ends[s] + 1)]


def insert_adapters(
    trunk: nn.Module,
    stages: Sequence[int] = DEFAULT_STAGES,
    channel_factor: float = DEFAULT_CHANNEL_FACTOR,
    scale: float = DEFAULT_SCALE,
) -> List[int]:
    """Add an adapter to every block of ``stages`` of a sam2 ``Hiera`` trunk, in place.

    Returns the block indices that received one.
    """
    if channel_factor <= 0:
        raise UsageError(f"channel_factor must be > 0, got {channel_factor}")
    indices = stage_block_indices(trunk, stages)
    for i in indices:
        block = trunk.blocks[i]
        width = bottleneck(block.dim, channel_factor)
        if width < 1:
            raise UsageError(
                f"channel_factor {channel_factor} gives an empty bottleneck for block {i} "
                f"(dim_in={block.dim})"
            )
        setattr(block, ADAPTER_ATTR, Adapter(block.dim_out, width, scale))
        block.forward = types.MethodType(_block_forward_with_adapter, block)
    return indices


def bottleneck(dim_in: int, channel_factor: float) -> int:
    """SANSA's adapter width: ``int(dim_in * channel_factor)`` (the block's *input* dim)."""
    return int(dim_in * channel_factor)


def channel_factor_fit(widths: Dict[int, int], dims: Dict[int, int]
                       ) -> Tuple[List[float], Optional[Tuple[float, float]]]:
    """Which channel factors give bottleneck ``widths[block]`` for blocks of input dim ``dims[block]``.

    Returns the fitting :data:`KNOWN_CHANNEL_FACTORS` and the exact range
    ``[lo, hi)`` of every factor that fits (None when none does).
    """
    known = [cf for cf in KNOWN_CHANNEL_FACTORS
             if all(bottleneck(dims[i], cf) == b for i, b in widths.items())]
    lo, hi = 0.0, float("inf")
    for i, b in widths.items():
        lo, hi = max(lo, b / dims[i]), min(hi, (b + 1) / dims[i])
    return known, ((lo, hi) if lo < hi else None)


def describe_fit(widths: Dict[int, int], dims: Dict[int, int]) -> str:
    """``"channel factor 0.3 fits"`` (or the range that fits) for error messages."""
    known, rng = channel_factor_fit(widths, dims)
    if known:
        return f"channel factor {known[0]} fits"
    return f"a channel factor in [{rng[0]:.4f}, {rng[1]:.4f}) fits" if rng else "no channel factor fits"


def adapter_widths(state_dict: Dict[str, torch.Tensor]) -> Dict[int, int]:
    """``{block: bottleneck}`` from the ``...blocks.{i}.adapter.down_proj.weight`` shapes of a state dict."""
    out = {}
    for k, v in state_dict.items():
        m = re.match(rf"image_encoder\.trunk\.blocks\.(\d+)\.{ADAPTER_ATTR}\.down_proj\.weight$", k)
        if m and v.ndim == 2:
            out[int(m.group(1))] = int(v.shape[0])
    return dict(sorted(out.items()))


def adapter_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The adapter parameters of a model, with their full names."""
    return {k: v for k, v in model.state_dict().items() if f".{ADAPTER_ATTR}." in k}


@torch.no_grad()
def fold_adapter_scale(model: nn.Module) -> int:
    """Fold every adapter's constant scale into its ``up_proj``; returns how many."""
    n = 0
    for m in model.modules():
        if isinstance(m, Adapter) and m.scale != 1.0:
            m.up_proj.weight.mul_(m.scale)
            m.up_proj.bias.mul_(m.scale)
            m.scale = 1.0
            n += 1
    return n
