"""The contract of the edge graphs that model families share: frame sizes, and
the Pillow preprocess graph (a uint8 frame -> the model input, as Pillow resizes).

Edge graphs are the small weightless graphs at a model's edge (FP32 engines,
never calibrated) that turn a frame of its own size into the model input on
the backend, next to the encoder. Two references resize uint8 images with
Pillow: sam2's video loader (bicubic) and the dense models' authors (bilinear,
through torchvision's ``Resize`` on a PIL image). One graph serves both: the
filter lives in the taps fed to it (:func:`pil_frame_taps`, Pillow's
fixed-point weights), the graph is Pillow's integer arithmetic
(``export.edges.pil_preprocess_graph``), exact on any backend.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Dict

import numpy as np

from runtime.core.resize import PIL_FILTERS, pil_taps, pil_vertical_first, resize_uint8_pil
from runtime.core.spec import AxisRange, StageSpec, TensorSpec, check_image_size
from runtime.errors import UsageError

# Largest frame side the edge graphs' profiles admit by default: 1080p in
# either orientation. TensorRT sizes the graphs' activations for the largest
# frame (at 1920 x 1920 for a 1024 px model: the float preprocess graph's
# gathered taps [3,H,S,K] float32 118 MB, the bicubic Pillow graph's [3,H,S,9]
# int32 212 MB; the postprocess graph's logits [N,H,W] float32 118 MB at 8
# objects), so 4K is opt-in.
DEFAULT_MAX_FRAME_SIDE = 1920
# uint8 level -> float32 as the references compute it (sam2's loader: ``/ 255.0`` in float64, stored
# as float32; torchvision's ``ToTensor``: float32 ``/ 255``; the same values): the graph gathers from it.
UNIT_LEVELS = (np.arange(256) / 255.0).astype(np.float32)
UNIT_LEVELS.flags.writeable = False


def frame_ranges(max_side: int) -> Dict[str, AxisRange]:
    """``frame_h`` / ``frame_w`` ranges of an edge graph: 16 .. ``max_side`` px (opt 1080p)."""
    if not isinstance(max_side, int) or isinstance(max_side, bool) or max_side < 16:
        raise UsageError(f"the largest frame side must be an integer >= 16, got {max_side!r}")
    return {"frame_h": (16, min(1080, max_side), max_side), "frame_w": (16, min(1920, max_side), max_side)}


def admits_frame(spec: StageSpec, hw) -> bool:
    """Whether edge graph ``spec``'s profile takes ``[H,W]`` frames."""
    r = spec.axis_ranges
    return r["frame_h"][0] <= hw[0] <= r["frame_h"][2] and r["frame_w"][0] <= hw[1] <= r["frame_w"][2]


def pil_preprocess_spec(name: str, image_size: int, filter: str,
                        max_side: int = DEFAULT_MAX_FRAME_SIDE) -> StageSpec:
    """Edge stage ``name``: ``frame`` uint8 ``[H,W,3]`` RGB, Pillow's fixed-point ``filter`` taps of
    each axis (``col_idx/col_w [S,Kw]``, ``row_idx/row_w [S,Kh]``, int32) and ``vertical_first
    [1]`` bool (Pillow's pass order), from :func:`pil_frame_taps` -> ``image [1,3,S,S]`` float32 in
    [0, 1] (:func:`pil_model_input`).

    Frames of 16 .. ``max_side`` px per side; Pillow's tap count is
    ``2 * ceil(support * max(1, side / S)) + 1`` (support 1 bilinear, 2 bicubic).
    """
    check_image_size(image_size)
    if filter not in PIL_FILTERS:
        raise UsageError(f"unknown Pillow filter {filter!r}; choose from {', '.join(PIL_FILTERS)}")
    frames = frame_ranges(max_side)
    support = int(PIL_FILTERS[filter])
    k_min = 2 * support + 1
    taps = (k_min, k_min, 2 * max(support, -(-support * max_side // image_size)) + 1)
    s, i32 = image_size, "int32"
    return StageSpec(
        name,
        inputs=(TensorSpec("frame", ("frame_h", "frame_w", 3), "uint8"),
                TensorSpec("col_idx", (s, "taps_w"), i32), TensorSpec("col_w", (s, "taps_w"), i32),
                TensorSpec("row_idx", (s, "taps_h"), i32), TensorSpec("row_w", (s, "taps_h"), i32),
                TensorSpec("vertical_first", (1,), "bool")),
        outputs=(TensorSpec("image", (1, 3, s, s), "float32"),),
        axis_ranges={**frames, "taps_w": taps, "taps_h": taps},
    )


@lru_cache(maxsize=16)
def pil_frame_taps(height: int, width: int, size: int, filter: str) -> Dict[str, np.ndarray]:
    """The Pillow preprocess graph's filter inputs for ``[height, width]`` frames at model size
    ``size``: ``col_idx/col_w [S,Kw]``, ``row_idx/row_w [S,Kh]`` (int32, the weights Pillow's
    fixed-point ones) and ``vertical_first [1]`` (bool), those of :func:`pil_model_input`.
    Computed once per frame size (read-only arrays)."""
    out = {}
    for axis, n_in in (("col", width), ("row", height)):
        idx, w = pil_taps(n_in, size, filter)
        out[f"{axis}_idx"], out[f"{axis}_w"] = idx.astype(np.int32), np.ascontiguousarray(w, np.int32)
    out["vertical_first"] = np.array([pil_vertical_first((height, width), (size, size))])
    for a in out.values():
        a.flags.writeable = False
    return out


def pil_preprocess_feeds(frame: np.ndarray, size: int, filter: str) -> Dict[str, np.ndarray]:
    """uint8 RGB ``[H,W,3]`` -> the Pillow preprocess graph's feeds (the frame and its cached taps)."""
    return {"frame": np.ascontiguousarray(frame), **pil_frame_taps(frame.shape[0], frame.shape[1], size, filter)}


def pil_model_input(frame: np.ndarray, size: int, filter: str) -> np.ndarray:
    """uint8 RGB ``[H,W,3]`` -> ``[1,3,S,S]`` float32 in [0, 1]: Pillow's ``resize((S, S), filter)``
    (stretched to the square), then ``/ 255``, on the host (what the graph computes)."""
    if frame.dtype != np.uint8:
        raise TypeError(f"pil_model_input takes uint8 frames, got {frame.dtype}")
    x = UNIT_LEVELS[resize_uint8_pil(frame, (size, size), filter)]
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])
