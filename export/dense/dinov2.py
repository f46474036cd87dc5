"""DINOv2 ViT in timm's module and key layout, as SAM2-UNeXT uses it.

SAM2-UNeXT builds ``timm.create_model('vit_large_patch14_dinov2',
features_only=True, img_size=(448, 448))`` and takes ``[-1]`` of its output.
With timm >= 1.0 that is a ``FeatureGetterNet`` (an ``nn.ModuleDict`` holding
the ViT as ``model``; keys ``dino.model.*``) that calls
``forward_intermediates(x, indices=3, norm=False, output_fmt='NCHW',
intermediates_only=True)`` after ``prune_intermediate_layers`` replaced the
final norm (and head) by ``Identity``: so the feature is the **last block's
patch tokens without the final norm**, ``[B, 1024, 32, 32]`` at 448 px, and the
checkpoint has no ``norm.*`` / ``head.*`` keys.

Written here instead of depending on timm (whose torchvision import fails
beside this project's CPU torch); module names follow timm's
``VisionTransformer`` so the keys are the same: ``cls_token``, ``pos_embed``
``[1, 1 + g*g, D]`` (already resampled to the 448 grid when the authors created
the model), ``patch_embed.proj``, ``blocks.N.{norm1, attn.qkv, attn.proj,
ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}``. LayerNorm eps is 1e-6, GELU
exact, attention scale ``head_dim ** -0.5`` as in timm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from runtime.errors import UsageError


@dataclass(frozen=True)
class DinoConfig:
    """ViT hyper-parameters; the default is timm's ``vit_large_patch14_dinov2`` at 448 px."""

    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    patch_size: int = 14
    img_size: int = 448
    mlp_ratio: float = 4.0
    init_values: float = 1e-5

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    def __post_init__(self):
        if self.img_size % self.patch_size:
            raise UsageError(f"DINOv2 input size {self.img_size} is not a multiple of its patch "
                             f"size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise UsageError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")


# A small ViT of the same structure for unit tests.
TINY_DINO = DinoConfig(embed_dim=64, depth=2, num_heads=2, img_size=112)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: DinoConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.embed_dim, cfg.patch_size, cfg.patch_size)
        self.norm = nn.Identity()

    def forward(self, x):
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))  # B, N, C


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.q_norm = nn.Identity()
        self.k_norm = nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.norm = nn.Identity()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.norm(self.act(self.fc1(x))))


class Block(nn.Module):
    def __init__(self, cfg: DinoConfig):
        super().__init__()
        d = cfg.embed_dim
        self.norm1 = nn.LayerNorm(d, eps=1e-6)
        self.attn = Attention(d, cfg.num_heads)
        self.ls1 = LayerScale(d, cfg.init_values)
        self.norm2 = nn.LayerNorm(d, eps=1e-6)
        self.mlp = Mlp(d, int(d * cfg.mlp_ratio))
        self.ls2 = LayerScale(d, cfg.init_values)

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """timm's ViT with the final norm and head pruned (``features_only`` state)."""

    def __init__(self, cfg: DinoConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + cfg.grid ** 2, cfg.embed_dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(cfg) for _ in range(cfg.depth)])
        self.norm = nn.Identity()  # pruned by timm's FeatureGetterNet (norm=False)
        nn.init.normal_(self.cls_token, std=1e-6)

    def forward_last_block(self, x):
        """``[B,3,img,img]`` (normalised) -> last block's patch tokens ``[B, D, g, g]``."""
        b = x.shape[0]
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1) + self.pos_embed
        x = self.blocks(x)[:, 1:]
        g = self.cfg.grid
        return x.reshape(b, g, g, -1).permute(0, 3, 1, 2)


class DinoFeatures(nn.Module):
    """``FeatureGetterNet`` stand-in: the ViT lives at ``.model`` (keys ``model.*``)."""

    def __init__(self, cfg: DinoConfig = DinoConfig()):
        super().__init__()
        self.model = VisionTransformer(cfg)

    def forward(self, x):
        """Returns a one-element list, so ``dino(x)[-1]`` reads as in the authors' code."""
        return [self.model.forward_last_block(x)]
