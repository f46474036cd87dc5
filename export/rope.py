"""Real-valued RoPE memory attention, numerically equal to sam2's complex version.

sam2's ``RoPEAttention`` rotates query/key channel pairs with complex tensors
(``torch.polar``, ``view_as_complex``), which no ONNX exporter accepts. Here
each interleaved pair ``(x0, x1)`` is rotated with real cos/sin:
``(x0*cos - x1*sin, x0*sin + x1*cos)``: the same numbers up to float rounding.

Keys come as ``num_mem`` spatial memories of ``HW`` tokens each followed by
pointer tokens; RoPE is applied to the spatial keys only (the same rotation
for every memory, as sam2's ``rope_k_repeat``), never to pointer tokens.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn


def axial_rope_cos_sin(dim: int, end_x: int, end_y: int, theta: float = 10000.0
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables ``[end_x*end_y, dim//2]`` equal to sam2's ``compute_axial_cis``."""
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 4)[: dim // 4].float() / dim))
    t = torch.arange(end_x * end_y, dtype=torch.float32)
    t_x = (t % end_x).float()
    t_y = torch.div(t, end_x, rounding_mode="floor").float()
    angles = torch.cat([torch.outer(t_x, freqs), torch.outer(t_y, freqs)], dim=-1)
    return torch.cos(angles), torch.sin(angles)


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs of ``x [..., N, D]`` by ``cos/sin [N, D/2]``."""
    pairs = x.reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2)


class RealRoPEAttention(nn.Module):
    """Drop-in for a sam2 ``RoPEAttention`` (shares its projection weights).

    ``forward(q [B,Nq,C], k [B,Nk,Ck], v [B,Nk,Ck], num_spatial_k)``: the first
    ``num_spatial_k`` keys (a multiple of ``Nq``) are rotated, the rest are not.
    """

    def __init__(self, attn: nn.Module, feat_size: int, theta: float = 10000.0):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
            attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj)
        self.num_heads = attn.num_heads
        head_dim = attn.internal_dim // attn.num_heads
        cos, sin = axial_rope_cos_sin(head_dim, feat_size, feat_size, theta)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q, k, v, num_spatial_k: int | None = None):
        q = self._heads(self.q_proj(q))
        k = self._heads(self.k_proj(k))
        v = self._heads(self.v_proj(v))
        q = rotate_pairs(q, self.cos, self.sin)
        n_q = q.shape[-2]
        if num_spatial_k is None:  # self-attention: keys are the query tokens
            k = rotate_pairs(k, self.cos, self.sin)
        else:
            b, h, _, d = k.shape
            spatial = k[:, :, :num_spatial_k].reshape(b, h, -1, n_q, d)
            spatial = rotate_pairs(spatial, self.cos, self.sin).reshape(b, h, -1, d)
            k = torch.cat([spatial, k[:, :, num_spatial_k:]], dim=2)
        out = F.scaled_dot_product_attention(q, k, v)
        b, h, n, d = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * d))


def rope_theta(attn: nn.Module) -> float:
    """Recover ``rope_theta`` from a sam2 RoPEAttention's ``compute_cis`` partial."""
    return float(getattr(attn.compute_cis, "keywords", {}).get("theta", 10000.0))


def feat_side(num_tokens: int) -> int:
    side = int(math.isqrt(num_tokens))
    assert side * side == num_tokens
    return side
