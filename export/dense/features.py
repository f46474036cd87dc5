"""Encoder-feature engines: SAM2's frozen image encoder features, by name.

For users who attach their own heads to frozen SAM2 / Hiera features (the
setting of "How Universal Are SAM2 Features?", arXiv 2510.17051). The module
is sam2's own ``ImageEncoder`` (Hiera trunk + FPN neck) built from the
package's config, so an official checkpoint's ``image_encoder.trunk.*`` and
``image_encoder.neck.*`` tensors load unchanged.

Outputs (see :mod:`runtime.dense.spec`): ``trunk_s4, trunk_s8, trunk_s16,
trunk_s32`` (the four Hiera stage outputs, channels 96..768 for tiny/small,
112..896 base+, 144..1152 large) and, with ``fpn=True``, the neck's outputs
as SAM2 uses them (``backbone_fpn`` after ``scalp``: ``fpn_s4, fpn_s8,
fpn_s16``, 256 channels; before the mask decoder's ``conv_s0/conv_s1``).
"""

from __future__ import annotations

from typing import List

from torch import nn

from export.dense.blocks import Normalize, build_trunk, stage_channels

FPN_DIM = 256


class SAM2Features(nn.Module):
    """sam2's ``ImageEncoder`` as ``image_encoder`` (checkpoint keys ``image_encoder.*``)."""

    def __init__(self, trunk: str = "tiny", sam2_version: str = "2.1"):
        super().__init__()
        self.image_encoder = build_trunk(trunk, sam2_version, with_neck=True)

    @property
    def trunk_channels(self) -> List[int]:
        return stage_channels(self.image_encoder.trunk)

    def fpn_strides(self) -> List[int]:
        n = len(self.image_encoder.neck.convs) - int(self.image_encoder.scalp)
        return [4 * 2 ** i for i in range(n)]


class FeaturesNet(nn.Module):
    """Export wrapper ``features``: ``image`` in [0,1] -> trunk levels (+ FPN levels)."""

    def __init__(self, net: SAM2Features, fpn: bool):
        super().__init__()
        self.enc, self.fpn, self.norm = net.image_encoder, fpn, Normalize()

    def forward(self, image):
        x = self.norm(image)
        trunk = self.enc.trunk(x)
        if not self.fpn:
            return tuple(trunk)
        fpn, _pos = self.enc.neck(trunk)
        scalp = int(self.enc.scalp)
        if scalp > 0:
            fpn = fpn[:-scalp]
        return tuple(trunk) + tuple(fpn)


def export_nets(net: SAM2Features, fpn: bool):
    return {"features": FeaturesNet(net, fpn)}
