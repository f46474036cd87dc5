"""SAM2-UNeXT (Xiong et al., arXiv 2508.03566), as in the authors' ``SAM2UNeXT.py``.

Structure and state-dict keys (the authors save ``model.state_dict()``):

- ``sam.*``: SAM2.0 Hiera-L trunk with an :class:`~export.dense.blocks.Adapter`
  around every block (``sam.blocks.N.block.*``, ``sam.blocks.N.prompt_learn.*``).
- ``dino.model.*``: DINOv2-L (timm ``vit_large_patch14_dinov2``,
  ``features_only``, 448 px): see :mod:`export.dense.dinov2`. It sees the
  *normalised* input resized to 448x448 (``F.interpolate`` bilinear,
  ``align_corners=False``, no antialias) and gives the last block's tokens.
- Dense glue: ``align1..4`` (1x1 conv 1024 -> each Hiera width), bilinear
  resize to each Hiera scale, concat ``[hiera, dino]``, ``reduce1..4`` (1x1
  conv to 128).
- Decoder: ``up4`` (Up(128, 128): x2 upsample of level 4 alone), then
  ``up3/up2/up1`` (Up(256, 128): concat ``[x, skip]`` *then* upsample x2 with
  ``align_corners=True``, DoubleConv), ``head`` 1x1 conv at S/2 and a bilinear
  x2 upsample to the input size. (The authors' forward calls ``head`` twice and
  keeps the second; the result is the same.)

Input 1024x1024 (the authors' test size), ImageNet-normalised.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from export.dense.blocks import DoubleConv, GatherResize, Normalize, build_trunk, stage_channels, wrap_blocks_with_adapters
from export.dense.dinov2 import DinoConfig, DinoFeatures

GLUE_CHANNELS = 128


class Up(nn.Module):
    """SAM2-UNeXT's up block: pad ``x2`` to ``x1``, ``cat([x1, x2])`` (if any), upsample x2, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)

    def forward(self, x1, x2=None):
        if x2 is not None:
            dy, dx = x1.size(2) - x2.size(2), x1.size(3) - x2.size(3)
            if dy or dx:  # static at export; zero for sizes that are multiples of 32
                x2 = F.pad(x2, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
            x1 = torch.cat([x1, x2], dim=1)
        return self.conv(self.up(x1))


class SAM2UNeXT(nn.Module):
    """The authors' model with the trunk size and the DINOv2 config as parameters."""

    def __init__(self, trunk: str = "large", sam2_version: str = "2.0", dino: DinoConfig = DinoConfig()):
        super().__init__()
        self.sam = wrap_blocks_with_adapters(build_trunk(trunk, sam2_version))
        self.dino = DinoFeatures(dino)
        self.dino_size = dino.img_size
        c = stage_channels(self.sam)
        d = dino.embed_dim
        self.align1, self.align2, self.align3, self.align4 = (nn.Conv2d(d, ci, 1) for ci in c)
        self.reduce1, self.reduce2, self.reduce3, self.reduce4 = (
            nn.Conv2d(2 * ci, GLUE_CHANNELS, 1) for ci in c)
        g = GLUE_CHANNELS
        self.up1 = Up(2 * g, g)
        self.up2 = Up(2 * g, g)
        self.up3 = Up(2 * g, g)
        self.up4 = Up(g, g)
        self.head = nn.Conv2d(g, 1, 1)

    def dino_features(self, x, resize: nn.Module | None = None):
        """Normalised image -> ``dino_feat [B, D, g, g]``; ``resize`` replaces ``F.interpolate``."""
        size = (self.dino_size, self.dino_size)
        x = resize(x) if resize is not None else F.interpolate(x, size=size, mode="bilinear")
        return self.dino(x)[-1]

    def decode(self, sam_feats: Sequence[torch.Tensor], x_d: torch.Tensor):
        aligns = (self.align1, self.align2, self.align3, self.align4)
        reduces = (self.reduce1, self.reduce2, self.reduce3, self.reduce4)
        x1, x2, x3, x4 = (
            red(torch.cat([xs, F.interpolate(al(x_d), size=xs.shape[-2:], mode="bilinear")], dim=1))
            for xs, al, red in zip(sam_feats, aligns, reduces))
        x = self.up4(x4)
        x = self.up3(x, x3)
        x = self.up2(x, x2)
        x = self.up1(x, x1)
        return F.interpolate(self.head(x), scale_factor=2, mode="bilinear")

    def forward(self, x):
        """ImageNet-normalised ``x [B,3,S,S]`` -> logits ``[B,1,S,S]`` as the authors' forward."""
        return self.decode(self.sam(x), self.dino_features(x))


def _dino_resize(net: SAM2UNeXT, image_size: int) -> GatherResize:
    return GatherResize((image_size, image_size), (net.dino_size, net.dino_size))


class UNeXtModelNet(nn.Module):
    """Export wrapper ``model``: ``image`` in [0,1] -> ``logits`` (DINOv2 input via :class:`GatherResize`)."""

    def __init__(self, net: SAM2UNeXT, image_size: int):
        super().__init__()
        self.net, self.norm, self.resize = net, Normalize(), _dino_resize(net, image_size)

    def forward(self, image):
        x = self.norm(image)
        return self.net.decode(self.net.sam(x), self.net.dino_features(x, self.resize))


class UNeXtReferenceNet(nn.Module):
    """The authors' forward (``F.interpolate``) on ``image`` in [0,1]: the end-to-end reference."""

    def __init__(self, net: SAM2UNeXT):
        super().__init__()
        self.net, self.norm = net, Normalize()

    def forward(self, image):
        return self.net(self.norm(image))


class UNeXtSamEncoderNet(nn.Module):
    """Export wrapper ``sam_encoder``: ``image`` -> ``hiera_s4 .. hiera_s32``."""

    def __init__(self, net: SAM2UNeXT):
        super().__init__()
        self.sam, self.norm = net.sam, Normalize()

    def forward(self, image):
        return tuple(self.sam(self.norm(image)))


class UNeXtDinoEncoderNet(nn.Module):
    """Export wrapper ``dino_encoder``: ``image`` -> ``dino_feat``."""

    def __init__(self, net: SAM2UNeXT, image_size: int):
        super().__init__()
        self.net, self.norm, self.resize = net, Normalize(), _dino_resize(net, image_size)

    def forward(self, image):
        return self.net.dino_features(self.norm(image), self.resize)


class UNeXtDecoderNet(nn.Module):
    """Export wrapper ``decoder``: four Hiera levels + ``dino_feat`` -> ``logits``."""

    def __init__(self, net: SAM2UNeXT):
        super().__init__()
        self.net = net

    def forward(self, s4, s8, s16, s32, dino_feat):
        return self.net.decode((s4, s8, s16, s32), dino_feat)


def export_nets(net: SAM2UNeXT, split: bool, image_size: int):
    if not split:
        return {"model": UNeXtModelNet(net, image_size)}
    return {"sam_encoder": UNeXtSamEncoderNet(net), "dino_encoder": UNeXtDinoEncoderNet(net, image_size),
            "decoder": UNeXtDecoderNet(net)}
