"""Input checking and pre/post-processing on the host (NumPy), matching the reference.

Image conversion rule (documented in the README):
- ``uint8`` ``[H,W,3]`` RGB is the native input.
- ``[H,W]`` or ``[H,W,1]`` grayscale is replicated to three channels.
- ``[H,W,4]`` RGBA drops the alpha channel (no compositing).
- float images must already be RGB in ``[0, 1]``; they are used as they are.
- anything else (other dtypes, channel counts, empty images) is refused.
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np

from runtime.resize import resize_bilinear


class InputError(ValueError):
    """An image, mask or prompt the segmenter cannot use; the message says why."""


def image_to_float_rgb(image: np.ndarray, what: str = "image") -> np.ndarray:
    """Validate ``image`` and return it as float32 RGB ``[H,W,3]`` in [0, 1]."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"{what} must be a NumPy array (H x W x 3, uint8 RGB), got {type(image).__name__}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise InputError(f"{what} must be H x W x 3 (RGB), got shape {image.shape}")
    c = image.shape[2]
    if c == 1:
        image = np.repeat(image, 3, axis=2)
    elif c == 4:
        image = image[:, :, :3]
    elif c != 3:
        raise InputError(f"{what} has {c} channels; expected 3 (RGB), 1 (gray) or 4 (RGBA)")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / np.float32(255.0)
    if np.issubdtype(image.dtype, np.floating):
        lo, hi = float(np.nanmin(image)), float(np.nanmax(image))
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0.0 or hi > 1.0:
            raise InputError(
                f"float {what} must hold finite values in [0, 1] (got min {lo}, max {hi}); "
                "pass uint8 RGB or scale it first"
            )
        return image.astype(np.float32)
    raise InputError(f"{what} has dtype {image.dtype}; pass uint8 RGB (or float in [0, 1])")


def image_to_model_input(image_rgb: np.ndarray, size: int) -> np.ndarray:
    """float RGB ``[H,W,3]`` -> ``[1,3,S,S]`` (antialiased bilinear, as the reference)."""
    x = resize_bilinear(image_rgb, (size, size), antialias=True)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def check_mask(mask: np.ndarray, image_hw: Tuple[int, int]) -> np.ndarray:
    """Validate a reference mask and return it as float32 0/1 ``[H,W]``."""
    if not isinstance(mask, np.ndarray):
        raise InputError(f"mask must be a NumPy array (H x W bool), got {type(mask).__name__}")
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[:, :, 0]
    if mask.ndim != 2:
        raise InputError(f"mask must be H x W (one channel), got shape {mask.shape}")
    if mask.shape != tuple(image_hw):
        raise InputError(
            f"mask is {mask.shape[0]}x{mask.shape[1]} but its image is "
            f"{image_hw[0]}x{image_hw[1]}; masks must have their image's size"
        )
    m = mask > 0 if mask.dtype != np.bool_ else mask
    if not m.any():
        raise InputError("mask is empty (no foreground pixel): a reference needs the object marked")
    if m.all():
        raise InputError("mask is all foreground: a reference needs background too; check the mask file")
    return m.astype(np.float32)


def scribble_to_points(stroke: np.ndarray, image_hw: Tuple[int, int], max_points: int
                       ) -> Tuple[np.ndarray, int]:
    """A scribble (stroke mask ``[H,W]``) -> positive clicks ``[P,2]`` (x, y), as SANSA prompts it.

    SANSA turns every pixel of the stroke into a positive point
    (``util/promptable_utils.py``: ``nonzero(stroke)`` in raster order). More
    than ``max_points`` (what the decoder's profile admits) are subsampled
    deterministically: ``max_points`` pixels evenly spaced along that raster
    order. Returns ``(points, stroke pixel count)``.
    """
    if not isinstance(stroke, np.ndarray):
        raise InputError(f"scribble must be a NumPy array (H x W bool), got {type(stroke).__name__}")
    if stroke.ndim == 3 and stroke.shape[2] == 1:
        stroke = stroke[:, :, 0]
    if stroke.shape != tuple(image_hw):
        raise InputError(f"scribble is {stroke.shape} but its image is {image_hw[0]}x{image_hw[1]}; "
                         "draw the stroke on an H x W mask of the reference image")
    ys, xs = np.nonzero(stroke)
    n = len(xs)
    if n == 0:
        raise InputError("scribble is empty (no stroke pixel): draw on the object")
    keep = np.arange(n) if n <= max_points else np.unique(np.linspace(0, n - 1, max_points).round().astype(int))
    return np.stack([xs[keep], ys[keep]], axis=1).astype(np.float32), n


def mask_to_model_size(mask01: np.ndarray, size: int) -> np.ndarray:
    """0/1 mask ``[H,W]`` -> ``[S,S]`` float (antialiased bilinear); callers threshold it
    (the few-shot contract at ``> 0``, sam2's video predictor at ``>= 0.5``)."""
    return resize_bilinear(mask01, (size, size), antialias=True)


def mask_downsample(hard: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """sam2's ``mask_downsample`` (Conv2d 1->1, kernel 4, stride 4): ``[S,S]`` -> ``[1,1,S/4,S/4]``."""
    s = hard.shape[0] // 4
    blocks = hard.reshape(s, 4, s, 4).astype(np.float32)
    out = np.einsum("aibj,ij->ab", blocks, weight.reshape(4, 4).astype(np.float32)) + bias.reshape(())
    return out[None, None].astype(np.float32)


def logits_to_image(low_res: np.ndarray, image_hw: Tuple[int, int]) -> np.ndarray:
    """``[S/4,S/4]`` logits -> ``[H,W]`` (bilinear, align_corners=False)."""
    return resize_bilinear(low_res, image_hw, antialias=False)


def threshold_logit(threshold: float) -> float:
    """The logit equivalent of ``sigmoid(x) > threshold``."""
    if not 0.0 < threshold < 1.0:
        raise InputError(f"threshold must be in (0, 1), got {threshold}")
    return math.log(threshold / (1.0 - threshold))
