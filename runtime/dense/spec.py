"""One description of the tensors of the dense models and feature engines.

Made by the exporter and stored in the model folder, like
:mod:`runtime.sam2.spec` for the SAM2 stages. Every part takes ``image [B,3,S,S]`` RGB in [0, 1] (ImageNet
normalisation runs inside the graph) or features produced by another part,
and the runtime chains parts by tensor name.

Kinds and their parts:

- ``sam2-unet``: ``model`` (image -> ``logits [B,1,S,S]``), or split into
  ``encoder`` (image -> Hiera stage outputs ``hiera_s4 .. hiera_s32``) and
  ``decoder`` (those four -> ``logits``).
- ``sam2-unext``: ``model``, or split into ``sam_encoder`` (image ->
  ``hiera_s4 .. hiera_s32``), ``dino_encoder`` (image -> ``dino_feat
  [B,D,g,g]``, the image resized to the DINOv2 input size inside the graph) and
  ``decoder`` (five inputs -> ``logits``).
- ``features``: ``features`` (image -> ``trunk_s4 .. trunk_s32`` and, with the
  FPN, ``fpn_s4 ..``): SAM2's trunk (and neck) features by name.

``sam2-unet`` and ``sam2-unext`` folders also hold one edge stage,
``preprocess`` (:func:`dense_edge_specs`): a uint8 image of its own size ->
``image [1,3,S,S]`` as the authors resize it (Pillow's bilinear), on the backend.

``model_config`` (recorded in the manifest) holds what the shapes depend on:
``trunk_channels`` (four ints), and ``dino_dim``/``dino_grid`` (SAM2-UNeXT) or
``fpn_dim``/``fpn_strides`` (features with FPN).
"""

from __future__ import annotations

from typing import Dict, Mapping, Tuple

from runtime.core.edges import DEFAULT_MAX_FRAME_SIDE, pil_preprocess_spec
from runtime.core.spec import StageSpec, TensorSpec, check_image_size
from runtime.errors import UsageError

KINDS = ("sam2-unet", "sam2-unext", "features")
TRUNK_STRIDES = (4, 8, 16, 32)
DEFAULT_DENSE_AXIS_RANGES: Dict[str, Tuple[int, int, int]] = {"batch": (1, 1, 4)}
# Parts in the order the runtime runs them.
PARTS = {
    ("sam2-unet", False): ("model",),
    ("sam2-unet", True): ("encoder", "decoder"),
    ("sam2-unext", False): ("model",),
    ("sam2-unext", True): ("sam_encoder", "dino_encoder", "decoder"),
    ("features", False): ("features",),
}
LOGITS = "logits"
PREPROCESS = "preprocess"
# The Pillow filter of each kind's preprocessing (the authors' torchvision Resize on a PIL image);
# the feature engines resize float images (antialiased bilinear) and have no edge stage.
PIL_FILTER = {"sam2-unet": "bilinear", "sam2-unext": "bilinear"}


def hiera_names(prefix: str = "hiera") -> Tuple[str, ...]:
    return tuple(f"{prefix}_s{s}" for s in TRUNK_STRIDES)


def part_names(kind: str, split: bool = False) -> Tuple[str, ...]:
    if kind not in KINDS:
        raise UsageError(f"unknown dense model kind {kind!r}; choose one of {', '.join(KINDS)}")
    if (kind, bool(split)) not in PARTS:
        raise UsageError(f"{kind!r} has a single part; it cannot be split")
    return PARTS[(kind, bool(split))]


def dense_stage_specs(kind: str, image_size: int, model_config: Mapping[str, object],
                      split: bool = False,
                      axis_ranges: Mapping[str, Tuple[int, int, int]] | None = None) -> Dict[str, StageSpec]:
    """``{part: StageSpec}`` in run order for ``kind`` at a square ``image_size``."""
    check_image_size(image_size)
    names = part_names(kind, split)
    ranges = dict(DEFAULT_DENSE_AXIS_RANGES)
    ranges.update(axis_ranges or {})
    batch = {"batch": ranges["batch"]}
    s = image_size
    image = TensorSpec("image", ("batch", 3, s, s))
    logits = TensorSpec(LOGITS, ("batch", 1, s, s))
    chans = [int(c) for c in model_config["trunk_channels"]]
    prefix = "trunk" if kind == "features" else "hiera"
    trunk = tuple(TensorSpec(n, ("batch", c, s // st, s // st))
                  for n, c, st in zip(hiera_names(prefix), chans, TRUNK_STRIDES))
    if kind == "features":
        outs = trunk
        if model_config.get("fpn_strides"):
            d = int(model_config["fpn_dim"])
            outs += tuple(TensorSpec(f"fpn_s{st}", ("batch", d, s // st, s // st))
                          for st in model_config["fpn_strides"])
        return {"features": StageSpec("features", (image,), outs, batch)}
    if not split:
        return {"model": StageSpec("model", (image,), (logits,), batch)}
    specs = {names[0]: StageSpec(names[0], (image,), trunk, batch)}
    dec_in = trunk
    if kind == "sam2-unext":
        g, d = int(model_config["dino_grid"]), int(model_config["dino_dim"])
        dino = TensorSpec("dino_feat", ("batch", d, g, g))
        specs["dino_encoder"] = StageSpec("dino_encoder", (image,), (dino,), batch)
        dec_in = trunk + (dino,)
    specs["decoder"] = StageSpec("decoder", dec_in, (logits,), batch)
    return specs


def dense_edge_specs(kind: str, image_size: int, max_side: int = DEFAULT_MAX_FRAME_SIDE) -> Dict[str, StageSpec]:
    """The edge stages of a ``kind`` folder: ``preprocess`` (Pillow's :data:`PIL_FILTER` of the
    kind, :func:`runtime.core.edges.pil_preprocess_spec`) for the segmentation models, none for features."""
    if kind not in PIL_FILTER:
        return {}
    return {PREPROCESS: pil_preprocess_spec(PREPROCESS, image_size, PIL_FILTER[kind], max_side)}
