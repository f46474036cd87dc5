"""Resizing in NumPy that matches the references: torch's bilinear, and Pillow's 8-bit resampling.

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
from typing import Optional, Tuple

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


# Pillow's 8-bit resampling -----------------------------------------------------------
# Two references resize uint8 images with Pillow: the dense models' authors
# (torchvision's ``Resize`` on a PIL image: ``Image.resize(size, BILINEAR)``) and
# sam2's video loader (``Image.resize((S, S))``: BICUBIC, Pillow's default). Pillow
# resamples separably: per output pixel the filter (triangle of support 1, or
# Keys' cubic with a = -0.5 and support 2, widened by the scale when shrinking)
# over the source pixels in reach, normalised, as fixed-point integers with 22
# fraction bits; each pass sums in int32 from 2**21 (rounding), shifts and clips
# to uint8. This reproduces ``Resample.c``'s arithmetic exactly, so no Pillow is
# needed on the device (tests compare it with Pillow pixel for pixel).
#
# Pass order: Pillow up to 12.1 runs the horizontal pass first; 12.2 and 12.3 run
# the vertical pass first when the height shrinks and H > 100 W; the Pillow
# 13.0.0 wheel runs it first for more shapes where the height shrinks, and the
# uint8 rounding between the passes then differs (by 1 with the triangle, up to
# tens of levels with the cubic's ringing on noise). For a square output of side
# S that wheel goes vertical first exactly when ``H > S`` and ``2 * W < H + S``
# (which includes 12.2's rule; e.g. portrait 1080x1920 frames): a rule fitted on
# ~1400 random and targeted shapes against the installed 13.0.0 wheel (no Pillow
# source read holds it) and checked by ``tests/runtime/test_host_ops.py``. For
# non-square outputs its rule was not pinned down. This module follows that
# wheel for square outputs and one-axis resizes, and runs horizontal first for
# other two-axis resizes.
# The weights are computed in double precision with the operations of Pillow's C
# code, without fused multiply-adds, as x86-64 builds of Pillow run them; a
# Pillow build that contracts them into FMAs (compilers may on aarch64, e.g. a
# Jetson) could round a weight's last bit, and so rarely a pixel, otherwise (not
# checked here: no aarch64 Pillow).
_PIL_PRECISION_BITS = 22
PIL_FILTERS = {"bilinear": 1.0, "bicubic": 2.0}  # filter -> support at scale 1


def _pil_filter(name: str, x: np.ndarray) -> np.ndarray:
    """Pillow's ``bilinear_filter`` / ``bicubic_filter`` (double precision, the same operations)."""
    x = np.abs(x)
    if name == "bilinear":
        return np.where(x < 1.0, 1.0 - x, 0.0)
    a = -0.5
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@lru_cache(maxsize=64)
def pil_taps(in_size: int, out_size: int, filter: str = "bilinear") -> Tuple[np.ndarray, np.ndarray]:
    """``(index [out, K] int, fixed-point weight [out, K] int32)`` as Pillow's
    ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for ``filter`` (:data:`PIL_FILTERS`);
    taps past a pixel's reach have weight 0 (and a clamped index)."""
    if filter not in PIL_FILTERS:
        raise ValueError(f"unknown Pillow filter {filter!r}; choose from {', '.join(PIL_FILTERS)}")
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = PIL_FILTERS[filter] * filterscale
    ksize = int(np.ceil(support)) * 2 + 1
    centers = (np.arange(out_size) + 0.5) * scale
    xmin = np.maximum(np.trunc(centers - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum(np.trunc(centers + support + 0.5).astype(np.int64), in_size)
    count = xmax - xmin
    k = np.arange(ksize)[None, :]
    x = (k + xmin[:, None] - centers[:, None] + 0.5) * (1.0 / filterscale)
    w = np.where(k < count[:, None], _pil_filter(filter, x), 0.0)
    total = w.sum(axis=1, keepdims=True)
    w = np.where(total != 0, w / np.where(total != 0, total, 1.0), w)
    scaled = w * (1 << _PIL_PRECISION_BITS)
    fixed = np.trunc(np.where(scaled < 0, scaled - 0.5, scaled + 0.5)).astype(np.int32)
    return np.minimum(xmin[:, None] + k, in_size - 1), fixed


def _pil_pass(x: np.ndarray, out_size: int, axis: int, filter: str) -> np.ndarray:
    """One Pillow pass over ``axis`` of uint8 ``x``: per tap a gather (uint8) and a multiply-add in
    int32 (the sums fit, as in Pillow: 2 guard bits above 8 + 22), then the shift and clip to uint8."""
    idx, w = pil_taps(x.shape[axis], out_size, filter)
    wshape = [1] * x.ndim
    wshape[axis] = out_size
    shape = x.shape[:axis] + (out_size,) + x.shape[axis + 1:]
    acc = np.full(shape, 1 << (_PIL_PRECISION_BITS - 1), dtype=np.int32)
    term, gathered = np.empty(shape, np.int32), np.empty(shape, np.uint8)
    for j in range(idx.shape[1]):
        np.take(x, idx[:, j], axis=axis, out=gathered)
        np.multiply(gathered, w[:, j].reshape(wshape), out=term)
        acc += term
    acc >>= _PIL_PRECISION_BITS
    return np.clip(acc, 0, 255, out=acc).astype(np.uint8)


def pil_vertical_first(in_hw: Tuple[int, int], out_hw: Tuple[int, int]) -> bool:
    """Whether Pillow 13.0.0 resizes ``in_hw`` to ``out_hw`` vertical pass first (square outputs:
    the section comment's rule; otherwise False, horizontal first)."""
    (h, w), (oh, ow) = in_hw, out_hw
    return bool(oh == ow and h > oh and 2 * w < h + oh)


def resize_uint8_pil(image: np.ndarray, size: Tuple[int, int], filter: str = "bilinear",
                     vertical_first: Optional[bool] = None) -> np.ndarray:
    """``uint8 [H,W,C]`` -> ``uint8 [h,w,C]`` as Pillow's ``resize((w, h), filter)`` (``filter``:
    "bilinear" | "bicubic"), its arithmetic exactly. ``vertical_first``: the pass order; None:
    :func:`pil_vertical_first` (exact to Pillow 13.0.0 for square outputs and one-axis resizes),
    False: horizontal first (Pillow <= 12.1's order)."""
    if image.dtype != np.uint8:
        raise TypeError(f"resize_uint8_pil takes uint8 images, got {image.dtype}")
    if vertical_first is None:
        vertical_first = pil_vertical_first(image.shape[:2], size)
    x = image
    for axis in ((0, 1) if vertical_first else (1, 0)):
        if x.shape[axis] != size[axis]:
            x = _pil_pass(x, size[axis], axis, filter)
    return np.array(x, dtype=np.uint8)
