"""Building blocks shared by SAM2-UNet and SAM2-UNeXT, named as in the authors' code.

Attribute names matter: they are the state-dict keys of the authors' trained
checkpoints (``torch.save(model.state_dict(), ...)`` in their ``train.py``),
so a user's file loads with ``strict=True``.

- :class:`Adapter` wraps one Hiera block: ``block(x + prompt_learn(x))`` with
  ``prompt_learn = Sequential(Linear(d, 32), GELU, Linear(32, d), GELU)``
  (keys ``blocks.N.block.*`` and ``blocks.N.prompt_learn.{0,2}.*``).
- :class:`DoubleConv`: (3x3 conv without bias, BatchNorm, ReLU) x 2
  (keys ``double_conv.{0,1,3,4}.*``).
- :func:`build_trunk`: SAM2's Hiera trunk (and optionally its FPN neck) from
  the ``sam2`` package's Hydra configs, no checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

import torch
from torch import nn

from export.models import ModelChoice

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PROMPT_DIM = 32  # SAM2-UNet's adapter bottleneck


class Adapter(nn.Module):
    """A Hiera block with SAM2-UNet's input adapter: ``block(x + prompt_learn(x))``."""

    def __init__(self, block: nn.Module, hidden: int = PROMPT_DIM):
        super().__init__()
        self.block = block
        dim = block.attn.qkv.in_features
        self.prompt_learn = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x + self.prompt_learn(x))


def wrap_blocks_with_adapters(trunk: nn.Module) -> nn.Module:
    """Replace ``trunk.blocks`` by ``Sequential(Adapter(b) for b in blocks)``, as the authors do."""
    trunk.blocks = nn.Sequential(*[Adapter(b) for b in trunk.blocks])
    return trunk


class DoubleConv(nn.Module):
    """(convolution => [BN] => ReLU) * 2."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None):
        super().__init__()
        mid = mid_channels or out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Normalize(nn.Module):
    """RGB in [0, 1] -> ImageNet-normalised (the authors' ``transforms.Normalize``), in the graph."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class GatherResize(nn.Module):
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` as two gathers + weights.

    The taps and weights are computed once with torch's own float32 formulas
    (:func:`runtime.core.resize.filter_taps`). ONNX Runtime's ``Resize`` computes source
    coordinates as ``(i + 0.5) / scale - 0.5`` with ``scale = out / in``,
    torch as ``(in / out) * (i + 0.5) - 0.5``: for non-dyadic ratios (1024 ->
    448) the two roundings differ by ~1e-5 relative on noise images, above the
    fp32 parity gate. With the weights as constants every backend computes
    torch's numbers (and a gather is cheap on TensorRT).
    """

    def __init__(self, in_hw, out_hw):
        super().__init__()
        from runtime.core.resize import filter_taps

        for axis, (n_in, n_out) in zip("hw", zip(in_hw, out_hw)):
            idx, w = filter_taps(int(n_in), int(n_out), False)
            self.register_buffer(f"i0_{axis}", torch.from_numpy(idx[:, 0].copy()), persistent=False)
            self.register_buffer(f"i1_{axis}", torch.from_numpy(idx[:, 1].copy()), persistent=False)
            self.register_buffer(f"w0_{axis}", torch.from_numpy(w[:, 0].copy()), persistent=False)
            self.register_buffer(f"w1_{axis}", torch.from_numpy(w[:, 1].copy()), persistent=False)

    def forward(self, x):
        x = x.index_select(3, self.i0_w) * self.w0_w + x.index_select(3, self.i1_w) * self.w1_w
        return (x.index_select(2, self.i0_h) * self.w0_h[:, None]
                + x.index_select(2, self.i1_h) * self.w1_h[:, None])


def _config_path(trunk: str, sam2_version: str) -> Path:
    import sam2

    return Path(sam2.__file__).parent / ModelChoice(trunk, sam2_version).config_name


def build_trunk(trunk: str = "large", sam2_version: str = "2.0", with_neck: bool = False) -> nn.Module:
    """SAM2's Hiera trunk (``with_neck``: the whole ``ImageEncoder``, trunk + FPN) from sam2's config.

    Weights are the modules' default initialisation; load a checkpoint or
    randomise afterwards.
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(_config_path(trunk, sam2_version))
    node = cfg.model.image_encoder if with_neck else cfg.model.image_encoder.trunk
    return instantiate(node, _recursive_=True)


def stage_channels(trunk: nn.Module) -> List[int]:
    """Channels of the four Hiera stage outputs, highest resolution first."""
    return [int(trunk.blocks[i].dim_out if hasattr(trunk.blocks[i], "dim_out")
                else trunk.blocks[i].block.dim_out) for i in trunk.stage_ends]
