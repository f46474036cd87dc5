"""Tracking prompts for the camera loop: clicks, boxes and masks on the first frame, per object.

Command-line form (order matters, as typed)::

    --point X,Y        a foreground click        --neg-point X,Y   a background click
    --box X0,Y0,X1,Y1  a box (pixels)            --track-mask PATH a mask image (first frame's size)

Any of them may carry an object name, ``NAME=VALUE`` (``--box cup=10,20,80,90``);
prompts with the same name form one object. Without a name, each ``--box`` and
each ``--track-mask`` starts a new object (``obj1``, ``obj2``, ...) and the
clicks that follow it refine that object; clicks before any box or mask form
one object of their own. So ``--box 10,10,60,60 --neg-point 30,30 --box
80,20,150,100`` tracks two objects, the first refined by a background click.

Everything that can be checked without a frame is checked here, before any
engine loads; :meth:`ObjectPrompt.check_frame` checks coordinates and mask
size against the first frame. Errors are :class:`InputError` and name the
offending argument.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from runtime.core import imageio
from runtime.errors import InputError, UsageError

KINDS = {"point": "--point", "neg-point": "--neg-point", "box": "--box", "mask": "--track-mask"}
NAME_RE = re.compile(r"^([A-Za-z0-9_][A-Za-z0-9_.-]*)=(.*)$")
AUTO_PREFIX = "obj"


@dataclass
class ObjectPrompt:
    """One tracked object's prompt on the first frame: clicks and/or a box, or a mask."""

    name: str
    points: List[Tuple[float, float]] = field(default_factory=list)
    labels: List[int] = field(default_factory=list)
    box: Optional[Tuple[float, float, float, float]] = None
    mask: Optional[np.ndarray] = None  # [H,W] bool
    args: List[str] = field(default_factory=list)  # the arguments it came from, for messages

    def describe(self) -> str:
        if self.mask is not None:
            return f"{self.name}: mask {self.mask.shape[1]}x{self.mask.shape[0]} ({int(self.mask.sum())} px)"
        parts = []
        if self.box is not None:
            parts.append("box (" + ",".join(f"{v:g}" for v in self.box) + ")")
        pos, neg = sum(self.labels), len(self.labels) - sum(self.labels)
        if pos:
            parts.append(f"{pos} click{'s' * (pos > 1)}")
        if neg:
            parts.append(f"{neg} background click{'s' * (neg > 1)}")
        return f"{self.name}: " + " + ".join(parts)

    def tracker_kwargs(self) -> dict:
        """Keyword arguments of :meth:`runtime.sam2.tracker.VideoTracker.add_prompt`."""
        if self.mask is not None:
            return {"mask": self.mask}
        kw: dict = {}
        if self.box is not None:
            kw["box"] = self.box
        if self.points:
            kw["points"], kw["labels"] = [list(p) for p in self.points], list(self.labels)
        return kw

    def check_frame(self, hw: Tuple[int, int]) -> None:
        """Every coordinate inside a ``W x H`` frame, the mask of its size; else :class:`InputError`."""
        h, w = hw
        if self.mask is not None:
            if self.mask.shape != (h, w):
                raise InputError(
                    f"object {self.name}: {self.args[0]} is {self.mask.shape[1]}x{self.mask.shape[0]} "
                    f"(WxH) but the first frame is {w}x{h}; the mask must have the frame's size")
            return
        coords = ([] if self.box is None else [self.box[:2], self.box[2:]]) + list(self.points)
        for x, y in coords:
            if not (0 <= x <= w and 0 <= y <= h):
                raise InputError(
                    f"object {self.name} ({' '.join(self.args)}): ({x:g}, {y:g}) is outside the first frame, "
                    f"which is {w}x{h} (x in 0..{w}, y in 0..{h})")


def _numbers(text: str, n: int, what: str) -> Tuple[float, ...]:
    parts = text.split(",")
    try:
        vals = tuple(float(p) for p in parts)
    except ValueError:
        vals = ()
    if len(parts) != n or len(vals) != n or not all(np.isfinite(vals)):
        form = "X,Y" if n == 2 else "X0,Y0,X1,Y1"
        raise InputError(f"{what}: expected {form} ({n} numbers, pixels of the first frame), got {text!r}")
    return vals


def _split_name(kind: str, text: str) -> Tuple[Optional[str], str]:
    """``NAME=VALUE`` -> (NAME, VALUE); a mask path that exists as given keeps its ``=``."""
    if kind == "mask" and Path(text).is_file():
        return None, text
    m = NAME_RE.match(text)
    return (m.group(1), m.group(2)) if m else (None, text)


def _read_mask(path: str, what: str) -> np.ndarray:
    try:
        m = imageio.read_mask(path)
    except InputError as e:
        raise InputError(f"{what}: {e}") from e
    if not m.any():
        raise InputError(f"{what}: mask {path!r} is empty (no non-zero pixel)")
    if m.all():
        raise InputError(f"{what}: mask {path!r} is all foreground; it needs background pixels too")
    return m


def parse_prompts(items: Sequence[Tuple[str, str]]) -> List[ObjectPrompt]:
    """``[(kind, text), ...]`` in command-line order (kind: point, neg-point, box, mask) -> objects.

    Reads mask files. At least one object; each object has a mask, or a box
    and/or clicks with at least one foreground click or a box.
    """
    if not items:
        raise InputError("tracking needs a prompt on the first frame: --point X,Y, --box X0,Y0,X1,Y1 "
                          "or --track-mask PATH (see --help)")
    objects: Dict[str, ObjectPrompt] = {}
    named = {_split_name(k, t)[0] for k, t in items} - {None}
    auto = 0
    current: Optional[str] = None  # the object unnamed clicks refine

    def new_auto() -> str:
        nonlocal auto
        while True:
            auto += 1
            name = f"{AUTO_PREFIX}{auto}"
            if name not in named:
                return name

    for kind, text in items:
        if kind not in KINDS:
            raise UsageError(f"unknown prompt kind {kind!r}")
        flag = KINDS[kind]
        name, value = _split_name(kind, text)
        what = f"{flag} {text}"
        if name is None:
            if kind in ("box", "mask") or current is None:
                name = new_auto()
            else:
                name = current
            current = name
        obj = objects.setdefault(name, ObjectPrompt(name))
        obj.args.append(f"{flag} {text}")
        if obj.mask is not None or (kind == "mask" and (obj.points or obj.box is not None)):
            raise InputError(f"object {name}: a --track-mask cannot be combined with other prompts "
                              f"({' '.join(obj.args)}); give the mask alone, or another object name")
        if kind == "mask":
            obj.mask = _read_mask(value, what)
        elif kind == "box":
            if obj.box is not None:
                raise InputError(f"object {name} has two boxes ({' '.join(obj.args)}); one box per object "
                                  f"(unnamed boxes are separate objects)")
            x0, y0, x1, y1 = _numbers(value, 4, what)
            if not (x1 > x0 and y1 > y0):
                raise InputError(f"{what}: the box needs X1 > X0 and Y1 > Y0")
            obj.box = (x0, y0, x1, y1)
        else:
            obj.points.append(_numbers(value, 2, what))
            obj.labels.append(1 if kind == "point" else 0)
    for obj in objects.values():
        if obj.mask is None and obj.box is None and not any(obj.labels):
            raise InputError(f"object {obj.name} has only background clicks ({' '.join(obj.args)}); "
                              "add a --point or a --box for it")
    return list(objects.values())
