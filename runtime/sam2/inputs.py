"""SAM2 inputs on the host (NumPy): model input, reference masks and scribbles, prompts' pixels.

The rules for images themselves are in :mod:`runtime.core.images`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Dict, Tuple

import numpy as np

from runtime.core.edges import pil_model_input, pil_preprocess_feeds
from runtime.core.resize import filter_taps, resize_bilinear, upsample_bilinear
from runtime.errors import InputError


def image_to_model_input(image_rgb: np.ndarray, size: int) -> np.ndarray:
    """float RGB ``[H,W,3]`` -> ``[1,3,S,S]`` (antialiased bilinear, as the reference)."""
    x = resize_bilinear(image_rgb, (size, size), antialias=True)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def video_frame_to_model_input(frame: np.ndarray, size: int) -> np.ndarray:
    """uint8 RGB ``[H,W,3]`` -> ``[1,3,S,S]`` float32 in [0, 1], as sam2's video loader
    (``load_video_frames_from_jpg_images``: ``Image.resize((S, S))``, Pillow's default BICUBIC,
    then ``/ 255``). The frame is stretched to the square, as there (no aspect kept)."""
    return pil_model_input(frame, size, "bicubic")


def _graph_taps(cols: Tuple[int, int], rows: Tuple[int, int], antialias: bool) -> Dict[str, np.ndarray]:
    """An edge graph's filter inputs, ``{col,row}_{idx,w}`` (int32 / float32, read-only) for the
    ``(in, out)`` sizes of each axis."""
    out = {}
    for axis, (n_in, n_out) in (("col", cols), ("row", rows)):
        idx, w = filter_taps(n_in, n_out, antialias)
        out[f"{axis}_idx"], out[f"{axis}_w"] = idx.astype(np.int32), np.ascontiguousarray(w)
    for a in out.values():
        a.flags.writeable = False
    return out


@lru_cache(maxsize=16)
def frame_taps(height: int, width: int, size: int) -> Dict[str, np.ndarray]:
    """The preprocess graph's filter inputs for ``[height, width]`` frames at model size ``size``:
    ``col_idx/col_w [S,Kw]``, ``row_idx/row_w [S,Kh]`` (int32 / float32), those of
    :func:`image_to_model_input`. Computed once per frame size (read-only arrays)."""
    return _graph_taps((width, size), (height, size), True)


@lru_cache(maxsize=16)
def logit_taps(height: int, width: int, low: int) -> Dict[str, np.ndarray]:
    """The postprocess graph's filter inputs for ``[low, low]`` logits to ``[height, width]``:
    ``col_idx/col_w [W,2]``, ``row_idx/row_w [H,2]`` (int32 / float32), the plain bilinear filter
    of :func:`logits_to_image`'s reference. Computed once per frame size (read-only arrays)."""
    return _graph_taps((low, width), (low, height), False)


def video_preprocess_feeds(frame: np.ndarray, size: int) -> Dict[str, np.ndarray]:
    """uint8 RGB ``[H,W,3]`` -> the video preprocess graph's feeds (the frame and its cached
    bicubic taps, :func:`runtime.core.edges.pil_frame_taps`)."""
    return pil_preprocess_feeds(frame, size, "bicubic")


def preprocess_feeds(frame: np.ndarray, size: int) -> Dict[str, np.ndarray]:
    """uint8 RGB ``[H,W,3]`` -> the preprocess graph's feeds (the frame and its cached taps)."""
    return {"frame": np.ascontiguousarray(frame), **frame_taps(frame.shape[0], frame.shape[1], size)}


def postprocess_feeds(low_res: np.ndarray, image_hw: Tuple[int, int], threshold: float) -> Dict[str, np.ndarray]:
    """``[N,S/4,S/4]`` logits -> the postprocess graph's feeds (the logits, the cached taps of
    ``image_hw`` and the logit ``threshold``)."""
    return {"low_res": np.ascontiguousarray(low_res, np.float32),
            **logit_taps(int(image_hw[0]), int(image_hw[1]), low_res.shape[-1]),
            "threshold": np.array([threshold], np.float32)}


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
    if np.issubdtype(mask.dtype, np.floating) and not np.isfinite(mask).all():
        raise InputError("mask holds NaN or infinite values; pass a bool (or 0/1) mask")
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
    """``[S/4,S/4]`` logits -> ``[H,W]`` (bilinear, align_corners=False) on the host."""
    return upsample_bilinear(low_res, image_hw)
