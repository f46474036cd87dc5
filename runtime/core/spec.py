"""The tensor contract of a sub-network: names, shapes, dtypes, dynamic axes and profiles.

One :class:`StageSpec` per exported graph is made once (by the SAM2 or dense
spec functions), used by the exporter (names, dynamic axes), stored in the
model folder's manifest, read back by the runtime and the TensorRT builder
(optimisation profiles), and checked on every call of every backend
(:meth:`StageSpec.check_feeds`). Nothing else hard-codes a stage's sizes.

Shapes are tuples of ``int`` (fixed for the build's image size) and ``str``
(the name of a dynamic axis). ``axis_ranges[axis] = (min, opt, max)`` bounds
each dynamic axis; ``profiles`` optionally split that range into TensorRT
optimisation profiles (buckets), each a full ``{axis: (min, opt, max)}``
mapping inside ``axis_ranges``; without them one profile spans the ranges.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Sequence, Tuple, Union

import numpy as np

from runtime.errors import InputError, ProfileLimitError, UsageError

Dim = Union[int, str]
AxisRange = Tuple[int, int, int]
DTYPES = ("float32", "float16", "int64", "int32", "uint8", "bool")
# Hiera's largest stride: square input sizes that are multiples of it keep every
# FPN level an exact power-of-two fraction of the input.
IMAGE_SIZE_MULTIPLE = 32


class TensorContractError(InputError):
    """Feeds that do not match a stage's tensor description (names, dtype, shape)."""


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (ints and dynamic-axis names) and dtype of one tensor."""

    name: str
    shape: Tuple[Dim, ...]
    dtype: str = "float32"

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"tensor {self.name!r}: unknown dtype {self.dtype!r}; one of {DTYPES}")

    @property
    def dynamic_axes(self) -> Dict[int, str]:
        """``{axis_index: axis_name}`` for the dynamic axes of this tensor."""
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def concrete_shape(self, axes: Mapping[str, int]) -> Tuple[int, ...]:
        """The shape with every dynamic axis replaced by ``axes[name]``."""
        return tuple(axes[d] if isinstance(d, str) else d for d in self.shape)

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TensorSpec":
        return cls(str(d["name"]), tuple(x if isinstance(x, str) else int(x) for x in d["shape"]),
                   str(d.get("dtype", "float32")))


def _ranges(d: Mapping[str, Sequence[int]]) -> Dict[str, AxisRange]:
    return {str(k): tuple(int(x) for x in v) for k, v in d.items()}


@dataclass(frozen=True)
class StageSpec:
    """The inputs and outputs of one exported sub-network, in graph order."""

    name: str
    inputs: Tuple[TensorSpec, ...]
    outputs: Tuple[TensorSpec, ...]
    axis_ranges: Dict[str, AxisRange] = field(default_factory=dict)
    profiles: Tuple[Dict[str, AxisRange], ...] = ()

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

    @property
    def profile_ranges(self) -> Tuple[Dict[str, AxisRange], ...]:
        """The optimisation profiles to build: the buckets, or one spanning ``axis_ranges``."""
        return self.profiles or (dict(self.axis_ranges),)

    def check_feeds(self, feeds: Mapping[str, Tuple[Sequence[int], str]]) -> Dict[str, int]:
        """Check ``{input: (shape, dtype name)}`` against this spec; return each dynamic axis' value.

        Exactly the spec's inputs, their dtypes and fixed dims, one value per
        dynamic axis across inputs, inside ``axis_ranges``. Raises
        :class:`TensorContractError` (or :class:`~runtime.errors.ProfileLimitError`
        for an axis outside the range the engines were built for), naming the
        stage, the input, its shape and the broken rule.
        """
        missing = [n for n in self.input_names if n not in feeds]
        extra = [n for n in feeds if n not in self.input_names]
        if missing or extra:
            raise TensorContractError(
                f"stage {self.name!r}: missing inputs {missing}, unexpected inputs {extra}; "
                f"expected exactly {list(self.input_names)}")
        axes: Dict[str, int] = {}
        where: Dict[str, str] = {}
        for t in self.inputs:
            shape, dtype = feeds[t.name]
            shape = tuple(int(d) for d in shape)
            if str(dtype) != t.dtype:
                raise TensorContractError(
                    f"stage {self.name!r}: input {t.name!r} is {dtype}, the stage takes {t.dtype}")
            head = f"stage {self.name!r}: input {t.name!r} has shape {shape}, expected {t.shape}"
            if len(shape) != len(t.shape):
                raise TensorContractError(f"{head} (rank {len(shape)} instead of {len(t.shape)})")
            for i, (got, want) in enumerate(zip(shape, t.shape)):
                if isinstance(want, int):
                    if got != want:
                        raise TensorContractError(f"{head} (axis {i} is {got}, must be {want})")
                    continue
                if want in axes and axes[want] != got:
                    raise TensorContractError(
                        f"{head}: {want}={got} here but {want}={axes[want]} in input {where[want]!r}")
                axes[want], where[want] = got, t.name
                if want in self.axis_ranges:
                    lo, _, hi = self.axis_ranges[want]
                    if not lo <= got <= hi:
                        raise ProfileLimitError(
                            f"{head}: {want}={got} is outside the range {lo}..{hi} this model "
                            "folder was built for; give fewer/more inputs or rebuild with larger "
                            "ranges (export.build)")
        return axes

    def to_dict(self) -> Dict[str, Any]:
        d = {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs],
             "axis_ranges": {k: list(v) for k, v in self.axis_ranges.items()}}
        if self.profiles:
            d["profiles"] = [{k: list(v) for k, v in p.items()} for p in self.profiles]
        return d

    @classmethod
    def from_dict(cls, name: str, d: Mapping[str, Any]) -> "StageSpec":
        return cls(name, tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
                   tuple(TensorSpec.from_dict(t) for t in d["outputs"]),
                   _ranges(d.get("axis_ranges", {})),
                   tuple(_ranges(p) for p in d.get("profiles", ())))


def _find(tensors, name, stage):
    for t in tensors:
        if t.name == name:
            return t
    raise KeyError(f"stage {stage!r} has no tensor named {name!r}")


def check_image_size(image_size: int) -> None:
    """Raise :class:`~runtime.errors.UsageError` unless ``image_size`` is a supported model input size."""
    if not isinstance(image_size, int) or image_size <= 0:
        raise UsageError(f"image size must be a positive integer, got {image_size!r}")
    if image_size % IMAGE_SIZE_MULTIPLE:
        lower = max(IMAGE_SIZE_MULTIPLE, image_size // IMAGE_SIZE_MULTIPLE * IMAGE_SIZE_MULTIPLE)
        raise UsageError(
            f"image size {image_size} is not a multiple of {IMAGE_SIZE_MULTIPLE} "
            f"(the Hiera trunk's largest stride); use e.g. {lower} or "
            f"{lower + IMAGE_SIZE_MULTIPLE}"
        )


def example_feeds(spec: StageSpec, axes: Mapping[str, int], seed: int = 0) -> Dict[str, np.ndarray]:
    """Random but meaningful inputs for ``spec`` with dynamic axes set by ``axes``.

    Point labels are drawn from {-1, 0, 1}, coordinates inside the image,
    ``has_mask_input`` and the validity masks (``*_valid``) are 1; everything else is
    standard normal (images uniform).
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for t in spec.inputs:
        shape = t.concrete_shape(dict(axes))
        if t.name == "image":
            a = rng.random(shape)
        elif t.name == "point_coords":
            a = rng.random(shape) * spec.inputs[0].shape[-1] * 16  # 0..S
        elif t.name == "point_labels":
            a = rng.integers(-1, 2, size=shape)
        elif t.name == "has_mask_input" or t.name.endswith("_valid"):
            a = np.ones(shape)
        elif t.name == "mask_logits":
            a = rng.standard_normal(shape) * 10
        else:
            a = rng.standard_normal(shape)
        feeds[t.name] = np.ascontiguousarray(a, dtype=np.float32)
    return feeds


def specs_to_dict(specs: Mapping[str, StageSpec]) -> Dict[str, Any]:
    """``{stage: spec dict}`` in run order, for the manifest."""
    return {name: s.to_dict() for name, s in specs.items()}


def specs_from_dict(d: Mapping[str, Any]) -> Dict[str, StageSpec]:
    return {name: StageSpec.from_dict(name, v) for name, v in d.items()}
