"""Bilinear resizing in NumPy that matches ``torch.nn.functional.interpolate``.

``F.interpolate(mode="bilinear", align_corners=False)`` with and without
``antialias=True`` is the reference of the inference contract; OpenCV's
INTER_LINEAR / INTER_AREA are different filters. Both torch modes are a
separable triangle filter: for output index ``i`` the source centre is
``scale * (i + 0.5)`` with ``scale = in / out``; the triangle has support 1
(plain bilinear, and antialiased *up*-sampling) or ``scale`` (antialiased
down-sampling, widened by the scale as in PIL), and weights are normalised over
the taps that fall inside the image. Weights are precomputed per
``(in, out, antialias)`` and cached, so resizing a video frame costs a few
vectorised multiply-adds per output pixel.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Tuple

import numpy as np


@lru_cache(maxsize=64)
def filter_taps(in_size: int, out_size: int, antialias: bool) -> Tuple[np.ndarray, np.ndarray]:
    """``(index [out, K] int, weight [out, K] float32)`` of the 1-D filter.

    Computed with torch's formulas, rounded as torch rounds them (float32; the plain filter's
    source coordinate as one fused multiply-add), so the weights are torch's to the last bit.
    """
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    i = np.arange(out_size, dtype=f32)
    if not antialias:  # torch's classic bilinear: two taps, clamped source index
        # torch computes scale * (i + 0.5) - 0.5 as one fused multiply-add: the exact float64
        # value rounded once to float32 is that (the product of two float32 is exact in float64).
        src = np.maximum((np.float64(scale) * (i.astype(np.float64) + 0.5) - 0.5).astype(f32), f32(0))
        i0 = src.astype(np.int64)
        i1 = np.minimum(i0 + 1, in_size - 1)
        l1 = (src - i0.astype(f32)).astype(f32)
        return np.stack([i0, i1], 1), np.stack([f32(1) - l1, l1], 1).astype(f32)
    support, inv = (scale, f32(1) / scale) if scale > 1 else (f32(1), f32(1))
    centers = (scale * (i + f32(0.5))).astype(f32)
    lo = np.maximum((centers - support + f32(0.5)).astype(np.int64), 0)
    hi = np.minimum((centers + support + f32(0.5)).astype(np.int64), in_size)
    k = int((hi - lo).max())
    idx = lo[:, None] + np.arange(k)[None, :]
    w = f32(1) - np.abs((idx.astype(f32) - centers[:, None] + f32(0.5)) * inv)
    w = np.where((idx < hi[:, None]) & (w > 0), w, f32(0)).astype(f32)
    w = w / w.sum(axis=1, keepdims=True, dtype=f32)
    return np.minimum(idx, in_size - 1), w.astype(f32)


def _resize_axis(x: np.ndarray, out_size: int, axis: int, antialias: bool) -> np.ndarray:
    in_size = x.shape[axis]
    if in_size == out_size:
        return x
    idx, w = filter_taps(in_size, out_size, antialias)
    x = np.moveaxis(x, axis, 0)
    out = np.zeros((out_size,) + x.shape[1:], dtype=np.float32)
    wshape = (out_size,) + (1,) * (x.ndim - 1)
    for j in range(idx.shape[1]):
        out += w[:, j].reshape(wshape) * x[idx[:, j]]
    return np.moveaxis(out, 0, axis)


def resize_bilinear(x: np.ndarray, size: Tuple[int, int], antialias: bool = False,
                    axes: Tuple[int, int] = (0, 1)) -> np.ndarray:
    """Resize ``x`` (float) over ``axes`` (height, width) to ``size = (H, W)``.

    Width first, then height, as torch's separable antialiased kernel does.
    Returns float32.
    """
    x = np.asarray(x, dtype=np.float32)
    x = _resize_axis(x, size[1], axes[1], antialias)
    return _resize_axis(x, size[0], axes[0], antialias)


def upsample_bilinear(x: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """``[h,w]`` float -> ``[H,W]`` float32, plain bilinear (``align_corners=False``, no antialias).

    Where neither axis shrinks (mask logits to the frame, low-res to model size),
    OpenCV's ``INTER_LINEAR`` is the same filter as torch's and runs ~100x faster
    than the tap loop at 1080p; it differs from torch by float rounding of the
    source coordinates only (``tests/runtime/test_host_ops.py`` bounds it). Else
    :func:`resize_bilinear`.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or size[0] < x.shape[0] or size[1] < x.shape[1]:
        return resize_bilinear(x, size, antialias=False)
    if tuple(size) == x.shape:
        return x
    import cv2

    return cv2.resize(x, (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR)


# PIL's 8-bit resampling ---------------------------------------------------------------
# The dense models' authors resize with torchvision's Resize on a PIL image, i.e.
# Pillow's ``Image.resize(size, BILINEAR)``: a separable triangle filter (support
# widened by the scale when downsampling), fixed-point weights with 22 fraction
# bits, horizontal pass first, and each pass rounded and clipped to uint8. This
# reproduces Pillow's ``Resample.c`` integer arithmetic exactly, so no Pillow is
# needed on the device (tests compare it with Pillow pixel for pixel).
_PIL_PRECISION_BITS = 22


@lru_cache(maxsize=64)
def _pil_taps(in_size: int, out_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(index [out, K] int, fixed-point weight [out, K] int32)`` as Pillow's ``precompute_coeffs``."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    ksize = int(np.ceil(support)) * 2 + 1
    centers = (np.arange(out_size) + 0.5) * scale
    xmin = np.maximum(np.trunc(centers - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum(np.trunc(centers + support + 0.5).astype(np.int64), in_size)
    count = xmax - xmin
    k = np.arange(ksize)[None, :]
    x = (k + xmin[:, None] - centers[:, None] + 0.5) / filterscale
    w = np.where(k < count[:, None], np.maximum(1.0 - np.abs(x), 0.0), 0.0)
    total = w.sum(axis=1, keepdims=True)
    w = np.where(total != 0, w / np.where(total != 0, total, 1.0), w)
    fixed = np.trunc(0.5 + w * (1 << _PIL_PRECISION_BITS)).astype(np.int32)  # weights are >= 0
    return np.minimum(xmin[:, None] + k, in_size - 1), fixed


def _pil_pass(x: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    idx, w = _pil_taps(x.shape[axis], out_size)
    x = np.moveaxis(x, axis, 0)
    # 255 * 2**22 + 2**21 < 2**31: the sums fit int32, as in Pillow.
    acc = np.full((out_size,) + x.shape[1:], 1 << (_PIL_PRECISION_BITS - 1), dtype=np.int32)
    wshape = (out_size,) + (1,) * (x.ndim - 1)
    for j in range(idx.shape[1]):
        acc += w[:, j].reshape(wshape) * x[idx[:, j]]
    out = np.clip(acc >> _PIL_PRECISION_BITS, 0, 255).astype(np.uint8)
    return np.moveaxis(out, 0, axis)


def resize_uint8_pil(image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """``uint8 [H,W,C]`` -> ``uint8 [h,w,C]`` exactly as Pillow's ``resize((w, h), BILINEAR)`` up to
    Pillow 12: horizontal pass, then vertical. Pillow 13 runs the vertical pass first for some
    shapes where the height shrinks more than the width (python-pillow/Pillow#9549; seen here:
    portrait 1920x1080 -> 512x512), and the uint8 rounding between the passes then differs by 1
    on some pixels; the authors' pipelines predate it."""
    if image.dtype != np.uint8:
        raise TypeError(f"resize_uint8_pil takes uint8 images, got {image.dtype}")
    x = image
    if x.shape[1] != size[1]:
        x = _pil_pass(x.astype(np.int32), size[1], 1)
    if x.shape[0] != size[0]:
        x = _pil_pass(x.astype(np.int32), size[0], 0)
    return np.array(x, dtype=np.uint8)
