"""SAM2-UNet (Xiong et al., arXiv 2408.08870), as in the authors' ``SAM2UNet.py``.

Structure and state-dict keys (``torch.save(model.state_dict())`` in their
``train.py``, loaded with ``strict=True`` in their ``test.py``):

- ``encoder.*``: SAM2's Hiera trunk (SAM2.0 Hiera-L, neck deleted), every
  block wrapped in an :class:`~export.dense.blocks.Adapter`
  (``encoder.blocks.N.block.*``, ``encoder.blocks.N.prompt_learn.{0,2}.*``).
- ``rfb1..rfb4``: :class:`RFBModified` reducing the four stage outputs
  (144/288/576/1152 channels for Hiera-L) to 64 channels.
- ``up1..up4``: :class:`Up` (bilinear x2 with ``align_corners=True``, pad,
  concat skip first, DoubleConv(128 -> 64, mid 64)); ``up4`` exists in the
  checkpoint but the forward never uses it.
- ``side1``, ``side2``, ``head``: 1x1 convs to one channel. ``forward`` returns
  ``(out, out1, out2)``; the side outputs are deep supervision for training
  only, the exported graph returns ``out`` (logits at the input size).

Input: 352x352 (the authors' train and test size), ImageNet-normalised.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from export.dense.blocks import DoubleConv, Normalize, build_trunk, stage_channels, wrap_blocks_with_adapters

RFB_CHANNELS = 64


class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm; the ``relu`` attribute exists but is not applied (as the authors')."""

    def __init__(self, in_planes, out_planes, kernel_size, stride=1, padding=0, dilation=1):
        super().__init__()
        self.conv = nn.Conv2d(in_planes, out_planes, kernel_size=kernel_size, stride=stride,
                              padding=padding, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.bn(self.conv(x))


class RFBModified(nn.Module):
    """Receptive-field block: four dilated branches + residual, to ``out_channel`` channels."""

    def __init__(self, in_channel: int, out_channel: int):
        super().__init__()
        self.relu = nn.ReLU(True)
        self.branch0 = nn.Sequential(BasicConv2d(in_channel, out_channel, 1))

        def branch(k: int) -> nn.Sequential:
            p = k // 2
            return nn.Sequential(
                BasicConv2d(in_channel, out_channel, 1),
                BasicConv2d(out_channel, out_channel, kernel_size=(1, k), padding=(0, p)),
                BasicConv2d(out_channel, out_channel, kernel_size=(k, 1), padding=(p, 0)),
                BasicConv2d(out_channel, out_channel, 3, padding=k, dilation=k),
            )

        self.branch1 = branch(3)
        self.branch2 = branch(5)
        self.branch3 = branch(7)
        self.conv_cat = BasicConv2d(4 * out_channel, out_channel, 3, padding=1)
        self.conv_res = BasicConv2d(in_channel, out_channel, 1)

    def forward(self, x):
        x_cat = self.conv_cat(torch.cat(
            (self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), 1))
        return self.relu(x_cat + self.conv_res(x))


class Up(nn.Module):
    """SAM2-UNet's up block: upsample ``x1`` x2 (align_corners), pad to ``x2``, ``cat([x2, x1])``, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)

    def forward(self, x1, x2):
        x1 = self.up(x1)
        dy, dx = x2.size(2) - x1.size(2), x2.size(3) - x1.size(3)
        if dy or dx:  # static at export; zero for sizes that are multiples of 32
            x1 = F.pad(x1, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([x2, x1], dim=1))


class SAM2UNet(nn.Module):
    """The authors' model with the trunk size as a parameter (they use Hiera-L)."""

    def __init__(self, trunk: str = "large", sam2_version: str = "2.0"):
        super().__init__()
        self.encoder = wrap_blocks_with_adapters(build_trunk(trunk, sam2_version))
        c1, c2, c3, c4 = stage_channels(self.encoder)
        self.rfb1 = RFBModified(c1, RFB_CHANNELS)
        self.rfb2 = RFBModified(c2, RFB_CHANNELS)
        self.rfb3 = RFBModified(c3, RFB_CHANNELS)
        self.rfb4 = RFBModified(c4, RFB_CHANNELS)
        self.up1 = Up(2 * RFB_CHANNELS, RFB_CHANNELS)
        self.up2 = Up(2 * RFB_CHANNELS, RFB_CHANNELS)
        self.up3 = Up(2 * RFB_CHANNELS, RFB_CHANNELS)
        self.up4 = Up(2 * RFB_CHANNELS, RFB_CHANNELS)  # in the checkpoint, unused
        self.side1 = nn.Conv2d(RFB_CHANNELS, 1, kernel_size=1)
        self.side2 = nn.Conv2d(RFB_CHANNELS, 1, kernel_size=1)
        self.head = nn.Conv2d(RFB_CHANNELS, 1, kernel_size=1)

    def decode(self, feats: Sequence[torch.Tensor], side_outputs: bool = False):
        x1, x2, x3, x4 = feats
        x1, x2, x3, x4 = self.rfb1(x1), self.rfb2(x2), self.rfb3(x3), self.rfb4(x4)
        x = self.up1(x4, x3)
        out1 = F.interpolate(self.side1(x), scale_factor=16, mode="bilinear") if side_outputs else None
        x = self.up2(x, x2)
        out2 = F.interpolate(self.side2(x), scale_factor=8, mode="bilinear") if side_outputs else None
        x = self.up3(x, x1)
        out = F.interpolate(self.head(x), scale_factor=4, mode="bilinear")
        return (out, out1, out2) if side_outputs else out

    def forward(self, x):
        """ImageNet-normalised ``x`` -> ``(out, out1, out2)`` as the authors' forward."""
        return self.decode(self.encoder(x), side_outputs=True)


class UNetModelNet(nn.Module):
    """Export wrapper ``model``: ``image`` in [0,1] -> ``logits``."""

    def __init__(self, net: SAM2UNet):
        super().__init__()
        self.net, self.norm = net, Normalize()

    def forward(self, image):
        return self.net.decode(self.net.encoder(self.norm(image)))


class UNetEncoderNet(nn.Module):
    """Export wrapper ``encoder``: ``image`` -> ``hiera_s4, hiera_s8, hiera_s16, hiera_s32``."""

    def __init__(self, net: SAM2UNet):
        super().__init__()
        self.encoder, self.norm = net.encoder, Normalize()

    def forward(self, image):
        return tuple(self.encoder(self.norm(image)))


class UNetDecoderNet(nn.Module):
    """Export wrapper ``decoder``: the four stage outputs -> ``logits``."""

    def __init__(self, net: SAM2UNet):
        super().__init__()
        self.net = net

    def forward(self, s4, s8, s16, s32):
        return self.net.decode((s4, s8, s16, s32))


def export_nets(net: SAM2UNet, split: bool):
    return ({"encoder": UNetEncoderNet(net), "decoder": UNetDecoderNet(net)} if split
            else {"model": UNetModelNet(net)})
