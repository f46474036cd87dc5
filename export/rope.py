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


@torch.no_grad()
def fold_value_projection(v_proj: nn.Linear, out_proj: nn.Linear) -> Tuple[torch.Tensor, torch.Tensor]:
    """``out_proj . v_proj`` as one linear map: weight ``Wo Wv [C,Ck]``, bias ``Wo bv + bo [C]``.

    Computed in float64, returned in the weights' dtype.
    """
    wo, wv = out_proj.weight.double(), v_proj.weight.double()
    weight = wo @ wv
    bias = wo @ v_proj.bias.double() + out_proj.bias.double()
    return weight.to(out_proj.weight.dtype), bias.to(out_proj.weight.dtype)


class RealRoPEAttention(nn.Module):
    """Drop-in for a sam2 ``RoPEAttention`` (shares its projection weights).

    ``forward(q [B,Nq,C], k [B,Nk,Ck], v [B,Nk,Ck], num_spatial_k, key_bias)``: the
    first ``num_spatial_k`` keys (a multiple of ``Nq``) are rotated, the rest are
    not; ``key_bias`` masks keys out (padding).

    With one head (all of sam2's memory attention) the value projection is
    folded into the output projection: every row of the attention matrix
    ``A [Nq,Nk]`` sums to 1, so ``out_proj(A @ v_proj(v))`` equals
    ``(A @ v) @ (Wo Wv)^T + (Wo bv + bo)``. ``A @ v`` then runs at the value
    input width (64 for the memories instead of 256: a 4x smaller product)
    and one projection of the queries' length disappears. The folded weight
    and bias are computed in float64 when the wrapper is built, so build it
    after loading checkpoints. ``fold_values=False`` keeps sam2's order of
    operations (the benchmark's PyTorch reference).
    """

    def __init__(self, attn: nn.Module, feat_size: int, theta: float = 10000.0,
                 fold_values: bool = True):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
            attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj)
        self.num_heads = attn.num_heads
        self.fold_values = (fold_values and attn.num_heads == 1
                            and attn.v_proj.in_features <= attn.internal_dim)
        if self.fold_values:
            weight, bias = fold_value_projection(attn.v_proj, attn.out_proj)
            self.register_buffer("vo_weight", weight, persistent=False)
            self.register_buffer("vo_bias", bias, persistent=False)
        head_dim = attn.internal_dim // attn.num_heads
        # SDPA's default scale as a constant: the exporter then emits constant
        # multiplies that ONNX Runtime fuses into the QK^T MatMul.
        self.scale = head_dim ** -0.5
        cos, sin = axial_rope_cos_sin(head_dim, feat_size, feat_size, theta)
        # Persistent: exported as initializers, which the exporter deduplicates
        # across layers (non-persistent ones are inlined as a Constant per use:
        # 16 x 2 MB per attention at 1024 px).
        self.register_buffer("cos", cos)
        self.register_buffer("sin", sin)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B,N,H*d]`` -> ``[B,H,N,d]``."""
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def _values(self, v: torch.Tensor) -> torch.Tensor:
        """Values ``[B,H,Nk,dv]``: raw inputs ``[B,1,Nk,Ck]`` when folded, else projected."""
        return v.unsqueeze(1) if self.fold_values else self._heads(self.v_proj(v))

    def _output(self, out: torch.Tensor) -> torch.Tensor:
        """Attention result ``[B,H,Nq,dv]`` -> ``[B,Nq,C]`` through the (folded) output projection."""
        b, h, n, d = out.shape
        out = out.transpose(1, 2).reshape(b, n, h * d)
        if self.fold_values:
            return F.linear(out, self.vo_weight, self.vo_bias)
        return self.out_proj(out)

    def forward(self, q, k, v, num_spatial_k: int | None = None, key_bias=None):
        """``key_bias [B,1,1,Nk]`` (optional) is added to the attention scores."""
        q = self._heads(self.q_proj(q))
        k = self._heads(self.k_proj(k))
        q = rotate_pairs(q, self.cos, self.sin)
        n_q = q.shape[-2]
        if num_spatial_k is None:  # self-attention: keys are the query tokens
            k = rotate_pairs(k, self.cos, self.sin)
        else:
            b, h, _, d = k.shape
            spatial = k[:, :, :num_spatial_k].reshape(b, h, -1, n_q, d)
            spatial = rotate_pairs(spatial, self.cos, self.sin).reshape(b, h, -1, d)
            k = torch.cat([spatial, k[:, :, num_spatial_k:]], dim=2)
        return self._output(F.scaled_dot_product_attention(q, k, self._values(v), attn_mask=key_bias,
                                                           scale=self.scale))


def rope_theta(attn: nn.Module) -> float:
    """Recover ``rope_theta`` from a sam2 RoPEAttention's ``compute_cis`` partial."""
    return float(getattr(attn.compute_cis, "keywords", {}).get("theta", 10000.0))
