"""One description of every sub-network's tensors.

The exporter (names and dynamic axes of the ONNX graphs), the TensorRT builder
(optimisation profiles), the runtime (feeds and buffer sizes) and the tests all
read the shapes from here, so no stage hard-codes another stage's sizes.

Shapes are tuples whose entries are either an ``int`` (fixed for a given image
size) or a ``str`` naming a dynamic axis. Dynamic axes and their ranges:

- ``batch``: images per call (image encoder, memory encoder, mask decoder).
- ``num_mem``: spatial memories fed to memory attention (1 .. num_maskmem).
- ``num_ptr``: object pointers fed to memory attention (1 .. max_obj_ptrs).
- ``num_points``: prompt points per image in the mask decoder (>= 1; the
  decoder appends SAM's own padding point inside the graph). Up to
  :data:`MAX_PROMPT_POINTS`: SANSA prompts a reference with up to 20 clicks,
  and a scribble with every pixel of its stroke (subsampled to fit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Tuple, Union

Dim = Union[int, str]

HIDDEN_DIM = 256  # SAM2 transformer width (FPN neck d_model)
MEM_DIM = 64  # memory encoder output channels
FEAT_S1_DIM = 64  # conv_s1 output channels (stride 8 features)
FEAT_S0_DIM = 32  # conv_s0 output channels (stride 4 features)
NUM_MASK_TOKENS = 4  # single-mask token + 3 multimask tokens
BACKBONE_STRIDE = 16
# Hiera-T/S/B+ use a window spec of 14 on the stride-32 stage at 1024 px and
# the trunk's patch embedding has stride 4; sizes that are multiples of 32
# keep every FPN level an exact power-of-two fraction of the input.
IMAGE_SIZE_MULTIPLE = 32

STAGES = ("image_encoder", "memory_encoder", "memory_attention", "mask_decoder")

# Ranges of the dynamic axes: (min, opt, max). Used for TensorRT profiles and
# for validating feeds at run time.
MAX_PROMPT_POINTS = 64
DEFAULT_AXIS_RANGES: Dict[str, Tuple[int, int, int]] = {
    "batch": (1, 1, 4),
    "num_mem": (1, 7, 7),
    "num_ptr": (1, 16, 16),
    "num_points": (1, 2, MAX_PROMPT_POINTS),
}


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (ints and dynamic-axis names) and dtype of one tensor."""

    name: str
    shape: Tuple[Dim, ...]
    dtype: str = "float32"

    @property
    def dynamic_axes(self) -> Dict[int, str]:
        """``{axis_index: axis_name}`` for the dynamic axes of this tensor."""
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def concrete_shape(self, axes: Dict[str, int]) -> Tuple[int, ...]:
        """The shape with every dynamic axis replaced by ``axes[name]``."""
        return tuple(axes[d] if isinstance(d, str) else d for d in self.shape)


@dataclass(frozen=True)
class StageSpec:
    """The inputs and outputs of one exported sub-network, in graph order."""

    name: str
    inputs: Tuple[TensorSpec, ...]
    outputs: Tuple[TensorSpec, ...]
    axis_ranges: Dict[str, Tuple[int, int, int]] = field(default_factory=dict)

    @property
    def input_names(self) -> Tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> Tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def input(self, name: str) -> TensorSpec:
        return _find(self.inputs, name, self.name)

    def output(self, name: str) -> TensorSpec:
        return _find(self.outputs, name, self.name)

    @property
    def dynamic_axis_names(self) -> Tuple[str, ...]:
        names = []
        for t in self.inputs + self.outputs:
            for d in t.shape:
                if isinstance(d, str) and d not in names:
                    names.append(d)
        return tuple(names)


def _find(tensors, name, stage):
    for t in tensors:
        if t.name == name:
            return t
    raise KeyError(f"stage {stage!r} has no tensor named {name!r}")


def check_image_size(image_size: int) -> None:
    """Raise ``ValueError`` unless ``image_size`` is a supported model input size."""
    if not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"image size must be a positive integer, got {image_size!r}")
    if image_size % IMAGE_SIZE_MULTIPLE:
        lower = max(IMAGE_SIZE_MULTIPLE, image_size // IMAGE_SIZE_MULTIPLE * IMAGE_SIZE_MULTIPLE)
        raise ValueError(
            f"image size {image_size} is not a multiple of {IMAGE_SIZE_MULTIPLE} "
            f"(the Hiera trunk's largest stride); use e.g. {lower} or "
            f"{lower + IMAGE_SIZE_MULTIPLE}"
        )


def stage_specs(
    image_size: int = 1024,
    axis_ranges: Dict[str, Tuple[int, int, int]] | None = None,
) -> Dict[str, StageSpec]:
    """Tensor descriptions of the four sub-networks for a square ``image_size``.

    Shapes at 1024: ``vision_feat [B,256,64,64]``, ``feat_s1 [B,64,128,128]``,
    ``feat_s0 [B,32,256,256]``, mask logits ``[B,4,256,256]``.
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
            TensorSpec("mem_feats", ("num_mem", MEM_DIM, e, e), f32),
            TensorSpec("mem_pos", ("num_mem", MEM_DIM, e, e), f32),
            TensorSpec("obj_ptrs", ("num_ptr", HIDDEN_DIM), f32),
            TensorSpec("obj_ptr_pos", ("num_ptr", MEM_DIM), f32),
        ),
        outputs=(TensorSpec("conditioned_feat", (1,) + vision, f32),),
        axis_ranges=pick("num_mem", "num_ptr"),
    )
    mask_decoder = StageSpec(
        "mask_decoder",
        inputs=(
            TensorSpec("image_embed", ("batch",) + vision, f32),
            TensorSpec("feat_s1", ("batch", FEAT_S1_DIM, 2 * e, 2 * e), f32),
            TensorSpec("feat_s0", ("batch", FEAT_S0_DIM, lo, lo), f32),
            TensorSpec("point_coords", ("batch", "num_points", 2), f32),
            TensorSpec("point_labels", ("batch", "num_points"), f32),
            TensorSpec("mask_input", ("batch", 1, lo, lo), f32),
            TensorSpec("has_mask_input", (1,), f32),
        ),
        outputs=(
            TensorSpec("masks", ("batch", NUM_MASK_TOKENS, lo, lo), f32),
            TensorSpec("iou_pred", ("batch", NUM_MASK_TOKENS), f32),
            TensorSpec("obj_ptr", ("batch", NUM_MASK_TOKENS, HIDDEN_DIM), f32),
            TensorSpec("object_score_logits", ("batch", 1), f32),
        ),
        axis_ranges=pick("batch", "num_points"),
    )
    return {
        s.name: s for s in (image_encoder, memory_encoder, memory_attention, mask_decoder)
    }
