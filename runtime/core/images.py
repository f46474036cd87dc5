"""What the products accept as an image, and thresholds; shared by the SAM2 and dense products.

Image conversion rule (documented in the README):
- ``uint8`` ``[H,W,3]`` RGB is the native input.
- ``[H,W]`` or ``[H,W,1]`` grayscale is replicated to three channels.
- ``[H,W,4]`` RGBA drops the alpha channel (no compositing).
- float images must already be RGB in ``[0, 1]``; they are used as they are.
- anything else (other dtypes, channel counts, empty images) is refused.
"""

from __future__ import annotations

import math

import numpy as np

from runtime.errors import InputError


def image_to_float_rgb(image: np.ndarray, what: str = "image") -> np.ndarray:
    """Validate ``image`` and return it as float32 RGB ``[H,W,3]`` in [0, 1]."""
    return rgb_to_float(image_to_rgb(image, what))


def rgb_to_float(rgb: np.ndarray) -> np.ndarray:
    """An :func:`image_to_rgb` result as float32 in [0, 1] (uint8 / 255)."""
    return rgb.astype(np.float32) / np.float32(255.0) if rgb.dtype == np.uint8 else rgb


def image_to_rgb(image: np.ndarray, what: str = "image") -> np.ndarray:
    """Validate ``image`` and return it as RGB ``[H,W,3]``: uint8 as it is (no copy when
    already RGB), float as float32 in [0, 1]. Backends that take the frame itself
    (the preprocess graph) get the uint8 bytes."""
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
        return image
    if np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all():
            bad = int(np.size(image) - np.count_nonzero(np.isfinite(image)))
            raise InputError(f"float {what} has {bad} NaN or infinite value(s); pass finite RGB in [0, 1] "
                             "(or uint8 RGB)")
        lo, hi = float(image.min()), float(image.max())
        if lo < 0.0 or hi > 1.0:
            raise InputError(
                f"float {what} must hold finite values in [0, 1] (got min {lo}, max {hi}); "
                "pass uint8 RGB or scale it first"
            )
        return image.astype(np.float32)
    raise InputError(f"{what} has dtype {image.dtype}; pass uint8 RGB (or float in [0, 1])")


def threshold_logit(threshold: float) -> float:
    """The logit equivalent of ``sigmoid(x) > threshold``."""
    if not 0.0 < threshold < 1.0:
        raise InputError(f"threshold must be in (0, 1), got {threshold}")
    return math.log(threshold / (1.0 - threshold))
