"""The tensor contract of SAM2's four exported stages (see :mod:`runtime.core.spec`).

Dynamic axes and their ranges:

- ``batch``: images per call (image encoder, memory encoder).
- ``objects``: concepts (few-shot) or objects (tracking) of one frame per call
  (memory attention, mask decoder), up to :data:`DEFAULT_MAX_OBJECTS` by
  default. Each object attends to its own memories and pointers; objects with
  fewer than the call's ``num_mem`` / ``num_ptr`` are padded, and the padding
  is masked out of the attention by ``mem_valid`` / ``ptr_valid`` (1 a real
  entry, 0 padding), so a batched call gives each object what a call of its
  own gives it.
- ``num_mem``: spatial memories fed to memory attention (1 .. num_maskmem).
- ``num_ptr``: object pointers fed to memory attention (1 .. max_obj_ptrs).
- ``num_points``: prompt points per image in the mask decoder (>= 1; the
  decoder appends SAM's own padding point inside the graph). Up to
  :data:`MAX_PROMPT_POINTS`: SANSA prompts a reference with up to 20 clicks,
  and a scribble with every pixel of its stroke (subsampled to fit).

Memory attention gets two TensorRT profiles: one with exactly one memory and
one pointer (a one-shot concept, and the first tracked frame), the other the
whole range.

The *preprocess*, *video_preprocess* and *postprocess* graphs
(:func:`preprocess_spec`, :func:`video_preprocess_spec`,
:func:`postprocess_spec`) are edge stages, not among the four: no weights,
always FP32 engines, never calibrated. The first two turn a uint8 frame of its
own size into the encoder's input on the backend (as sam2's image predictor,
and as sam2's video loader), the third the chosen low-res mask logits into
frame-size logits and masks; frames outside their ``frame_h`` / ``frame_w``
range are handled on the host instead.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

from runtime.core.edges import DEFAULT_MAX_FRAME_SIDE, frame_ranges, pil_preprocess_spec
from runtime.core.spec import AxisRange, StageSpec, TensorSpec, check_image_size
from runtime.errors import UsageError

HIDDEN_DIM = 256  # SAM2 transformer width (FPN neck d_model)
MEM_DIM = 64  # memory encoder output channels
FEAT_S1_DIM = 64  # conv_s1 output channels (stride 8 features)
FEAT_S0_DIM = 32  # conv_s0 output channels (stride 4 features)
NUM_MASK_TOKENS = 4  # single-mask token + 3 multimask tokens
BACKBONE_STRIDE = 16

STAGES = ("image_encoder", "memory_encoder", "memory_attention", "mask_decoder")
PREPROCESS, VIDEO_PREPROCESS, POSTPROCESS = "preprocess", "video_preprocess", "postprocess"
EDGE_STAGES = (PREPROCESS, VIDEO_PREPROCESS, POSTPROCESS)

# Ranges of the dynamic axes: (min, opt, max). Used for TensorRT profiles and
# for validating feeds at run time.
MAX_PROMPT_POINTS = 64
DEFAULT_MAX_OBJECTS = 8
DEFAULT_AXIS_RANGES: Dict[str, AxisRange] = {
    "batch": (1, 1, 4),
    "objects": (1, 1, DEFAULT_MAX_OBJECTS),
    "num_mem": (1, 7, 7),
    "num_ptr": (1, 16, 16),
    "num_points": (1, 2, MAX_PROMPT_POINTS),
}


def memory_attention_profiles(ranges: Dict[str, AxisRange]) -> Tuple[Dict[str, AxisRange], ...]:
    """A one-memory, one-pointer bucket (1-shot, first tracked frame), then the full range;
    both span the whole ``objects`` range."""
    one = {"num_mem": (1, 1, 1), "num_ptr": (1, 1, 1)}
    full = {k: ranges[k] for k in ("num_mem", "num_ptr")}
    if full == one or any(full[k][0] > 1 for k in full):
        return ()  # one profile spanning the ranges
    objects = {"objects": ranges["objects"]}
    return ({**one, **objects}, {**full, **objects})


def stage_specs(
    image_size: int = 1024,
    axis_ranges: Dict[str, AxisRange] | None = None,
) -> Dict[str, StageSpec]:
    """Tensor descriptions of the four sub-networks for a square ``image_size``.

    Shapes at 1024: ``vision_feat [B,256,64,64]``, ``feat_s1 [B,64,128,128]``,
    ``feat_s0 [B,32,256,256]``, mask logits ``[N,4,256,256]`` for N objects.
    Memory attention and the mask decoder take the features of one frame
    (batch 1) and N objects' memories / prompts.
    """
    check_image_size(image_size)
    ranges = dict(DEFAULT_AXIS_RANGES)
    ranges.update(axis_ranges or {})
    e = image_size // BACKBONE_STRIDE  # embedding side (64 at 1024)
    lo = 4 * e  # low-res mask side (256 at 1024)
    f32, vision = "float32", (HIDDEN_DIM, e, e)

    def pick(*names):
        return {n: ranges[n] for n in names}

    image_encoder = StageSpec(
        "image_encoder",
        inputs=(TensorSpec("image", ("batch", 3, image_size, image_size), f32),),
        outputs=(
            TensorSpec("vision_feat", ("batch",) + vision, f32),
            TensorSpec("feat_s1", ("batch", FEAT_S1_DIM, 2 * e, 2 * e), f32),
            TensorSpec("feat_s0", ("batch", FEAT_S0_DIM, lo, lo), f32),
        ),
        axis_ranges=pick("batch"),
    )
    memory_encoder = StageSpec(
        "memory_encoder",
        inputs=(
            TensorSpec("vision_feat", ("batch",) + vision, f32),
            TensorSpec("mask_logits", ("batch", 1, image_size, image_size), f32),
        ),
        outputs=(TensorSpec("maskmem_features", ("batch", MEM_DIM, e, e), f32),),
        axis_ranges=pick("batch"),
    )
    memory_attention = StageSpec(
        "memory_attention",
        inputs=(
            TensorSpec("vision_feat", (1,) + vision, f32),
            TensorSpec("mem_feats", ("objects", "num_mem", MEM_DIM, e, e), f32),
            TensorSpec("mem_pos", ("objects", "num_mem", MEM_DIM, e, e), f32),
            TensorSpec("mem_valid", ("objects", "num_mem"), f32),
            TensorSpec("obj_ptrs", ("objects", "num_ptr", HIDDEN_DIM), f32),
            TensorSpec("obj_ptr_pos", ("objects", "num_ptr", MEM_DIM), f32),
            TensorSpec("ptr_valid", ("objects", "num_ptr"), f32),
        ),
        outputs=(TensorSpec("conditioned_feat", ("objects",) + vision, f32),),
        axis_ranges=pick("objects", "num_mem", "num_ptr"),
        profiles=memory_attention_profiles(ranges),
    )
    mask_decoder = StageSpec(
        "mask_decoder",
        inputs=(
            TensorSpec("image_embed", ("objects",) + vision, f32),
            TensorSpec("feat_s1", (1, FEAT_S1_DIM, 2 * e, 2 * e), f32),
            TensorSpec("feat_s0", (1, FEAT_S0_DIM, lo, lo), f32),
            TensorSpec("point_coords", ("objects", "num_points", 2), f32),
            TensorSpec("point_labels", ("objects", "num_points"), f32),
            TensorSpec("mask_input", ("objects", 1, lo, lo), f32),
            TensorSpec("has_mask_input", (1,), f32),
        ),
        outputs=(
            TensorSpec("masks", ("objects", NUM_MASK_TOKENS, lo, lo), f32),
            TensorSpec("iou_pred", ("objects", NUM_MASK_TOKENS), f32),
            TensorSpec("obj_ptr", ("objects", NUM_MASK_TOKENS, HIDDEN_DIM), f32),
            TensorSpec("object_score_logits", ("objects", 1), f32),
        ),
        axis_ranges=pick("objects", "num_points"),
    )
    return {
        s.name: s for s in (image_encoder, memory_encoder, memory_attention, mask_decoder)
    }


def preprocess_spec(image_size: int, max_side: int = DEFAULT_MAX_FRAME_SIDE) -> StageSpec:
    """The frame -> model-input graph: ``frame`` uint8 ``[H,W,3]`` RGB and the 1-D filter taps of
    each axis (``col_idx/col_w [S,Kw]``, ``row_idx/row_w [S,Kh]``, from
    :func:`runtime.sam2.inputs.frame_taps`) -> ``image [1,3,S,S]`` float32 in [0, 1]
    (the antialiased bilinear resize of :func:`runtime.sam2.inputs.image_to_model_input`).

    Frames of 16 .. ``max_side`` pixels per side; the tap counts span what
    those sizes can need (at most 3 when upsampling, ``ceil(2 * side / S) + 1``
    when shrinking).
    """
    check_image_size(image_size)
    frames = frame_ranges(max_side)
    # A triangle of half-width max(1, scale) covers at most 2 * support + 1 source pixels.
    k_max = max(3, -(-2 * max_side // image_size) + 1)
    s, f32, i32 = image_size, "float32", "int32"
    taps = (1, 3, k_max)
    return StageSpec(
        PREPROCESS,
        inputs=(TensorSpec("frame", ("frame_h", "frame_w", 3), "uint8"),
                TensorSpec("col_idx", (s, "taps_w"), i32), TensorSpec("col_w", (s, "taps_w"), f32),
                TensorSpec("row_idx", (s, "taps_h"), i32), TensorSpec("row_w", (s, "taps_h"), f32)),
        outputs=(TensorSpec("image", (1, 3, s, s), f32),),
        axis_ranges={**frames, "taps_w": taps, "taps_h": taps},
    )


def video_preprocess_spec(image_size: int, max_side: int = DEFAULT_MAX_FRAME_SIDE) -> StageSpec:
    """The frame -> model-input graph of sam2's video loader: Pillow's bicubic
    (:func:`runtime.core.edges.pil_preprocess_spec`; the host's twin is
    :func:`runtime.sam2.inputs.video_frame_to_model_input`)."""
    return pil_preprocess_spec(VIDEO_PREPROCESS, image_size, "bicubic", max_side)


def postprocess_spec(image_size: int, max_side: int = DEFAULT_MAX_FRAME_SIDE,
                     objects: AxisRange = DEFAULT_AXIS_RANGES["objects"]) -> StageSpec:
    """The low-res logits -> frame graph: ``low_res [N,S/4,S/4]`` (the chosen mask of each of N
    objects), the 2-tap plain bilinear filter of each axis (``col_idx/col_w [W,2]``,
    ``row_idx/row_w [H,2]``, from :func:`runtime.sam2.inputs.logit_taps`) and ``threshold [1]`` (a
    logit) -> ``logits [N,H,W]`` float32 (``F.interpolate(bilinear, align_corners=False)``, sam2's
    ``postprocess_masks``) and ``mask [N,H,W]`` bool (``logits > threshold``).

    Frames of 16 .. ``max_side`` pixels per side, ``objects`` as the folder's.
    """
    check_image_size(image_size)
    lo, f32, i32 = image_size // 4, "float32", "int32"
    return StageSpec(
        POSTPROCESS,
        inputs=(TensorSpec("low_res", ("objects", lo, lo), f32),
                TensorSpec("col_idx", ("frame_w", 2), i32), TensorSpec("col_w", ("frame_w", 2), f32),
                TensorSpec("row_idx", ("frame_h", 2), i32), TensorSpec("row_w", ("frame_h", 2), f32),
                TensorSpec("threshold", (1,), f32)),
        outputs=(TensorSpec("logits", ("objects", "frame_h", "frame_w"), f32),
                 TensorSpec("mask", ("objects", "frame_h", "frame_w"), "bool")),
        axis_ranges={"objects": tuple(objects), **frame_ranges(max_side)},
    )


def edge_specs(image_size: int, max_side: int = DEFAULT_MAX_FRAME_SIDE,
               objects: AxisRange = DEFAULT_AXIS_RANGES["objects"], tracking: bool = True) -> Dict[str, StageSpec]:
    """The edge stages of a SAM2 folder, by name (:data:`EDGE_STAGES` order); the video preprocess
    graph only where the folder tracks (``tracking``: stock SAM2, the folders ``VideoTracker`` opens)."""
    specs = {PREPROCESS: preprocess_spec(image_size, max_side)}
    if tracking:
        specs[VIDEO_PREPROCESS] = video_preprocess_spec(image_size, max_side)
    specs[POSTPROCESS] = postprocess_spec(image_size, max_side, objects)
    return specs


def parse_stages(text) -> List[str]:
    """``"a,b"`` / list / ``"all"`` -> the named SAM2 stages, in stage order (a clear error otherwise)."""
    items = [x.strip() for x in text.split(",") if x.strip()] if isinstance(text, str) else list(text or [])
    if items == ["all"]:
        return list(STAGES)
    bad = [x for x in items if x not in STAGES]
    if bad:
        raise UsageError(f"unknown stage(s) {bad}; choose from {', '.join(STAGES)} or 'all'")
    return [x for x in STAGES if x in items]
