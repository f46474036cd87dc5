"""Few-shot references on the command line: one syntax for every CLI, checked before any session opens.

Options (repeatable; ``CONCEPT=`` is optional, default concept ``default``):

- ``--ref [CONCEPT=]IMAGE:MASK``: a mask image (any non-zero pixel is the object);
- ``--ref-scribble [CONCEPT=]IMAGE:STROKE``: a stroke image of the same size
  (its non-zero pixels become positive clicks, SANSA's scribble prompt);
- ``--ref-box [CONCEPT=]IMAGE:X0,Y0,X1,Y1``: a box in the image's pixels;
- ``--ref-points [CONCEPT=]IMAGE:X,Y[;X,Y...]``: positive clicks;
- ``--refs FOLDER``: one subfolder per concept holding ``NAME.jpg|png`` with
  ``NAME_mask.png`` or ``NAME_scribble.png``::

      refs/dog/a.jpg  refs/dog/a_mask.png  refs/cat/x.png  refs/cat/x_scribble.png

Images are read with OpenCV and converted to RGB. Every error is an
:class:`~runtime.errors.InputError` naming the option or file.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Tuple

import numpy as np

from runtime.core import imageio
from runtime.errors import InputError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
PROMPT_FILES = {"_mask": "mask", "_scribble": "scribble"}  # folder file suffix -> prompt
OPTIONS = {"--ref": "mask", "--ref-scribble": "scribble", "--ref-box": "box", "--ref-points": "points"}


@dataclass
class Reference:
    """One reference: its concept, RGB image and prompt (``{"mask": ...}``, ``{"box": ...}``, ...)."""

    concept: str
    image: np.ndarray  # [H,W,3] uint8 RGB
    prompt: Dict[str, Any]
    where: str  # the option or files it came from, for messages
    sources: List[Path] = field(default_factory=list)


def split_ref(text: str, option: str) -> Tuple[str, str, str]:
    """``[CONCEPT=]IMAGE:VALUE`` -> ``(concept, image path, value)``."""
    concept, sep, rest = text.partition("=")
    if not sep or ":" in concept or "/" in concept:  # no concept given (or '=' inside a path)
        concept, rest = "default", text
    img, sep, value = rest.rpartition(":")
    if not sep or not img or not value or not concept:
        raise InputError(f"{option} {text!r}: expected [CONCEPT=]IMAGE:{_value_name(option)}")
    return concept, img, value


def _value_name(option: str) -> str:
    return {"--ref": "MASK", "--ref-scribble": "STROKE", "--ref-box": "X0,Y0,X1,Y1",
            "--ref-points": "X,Y[;X,Y...]"}[option]


def _numbers(text: str, option: str, arg: str) -> List[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"{option} {arg!r}: {text!r} is not comma-separated numbers") from None


def parse_ref(option: str, text: str) -> Reference:
    """One ``--ref*`` option -> a checked :class:`Reference` (files read, shapes checked)."""
    kind = OPTIONS[option]
    concept, img_path, value = split_ref(text, option)
    image = imageio.read_rgb(img_path)
    if kind in ("mask", "scribble"):
        m = imageio.read_mask(value)
        if m.shape != image.shape[:2]:
            raise InputError(f"{option} {text!r}: {value} is {m.shape[1]}x{m.shape[0]} but {img_path} is "
                             f"{image.shape[1]}x{image.shape[0]}; it must have its image's size")
        return Reference(concept, image, {kind: m}, f"{option} {text}", [Path(img_path), Path(value)])
    if kind == "box":
        box = _numbers(value, option, text)
        if len(box) != 4:
            raise InputError(f"{option} {text!r}: a box is X0,Y0,X1,Y1 (four numbers)")
        return Reference(concept, image, {"box": box}, f"{option} {text}", [Path(img_path)])
    pts = [_numbers(p, option, text) for p in value.split(";") if p.strip()]
    if not pts or any(len(p) != 2 for p in pts):
        raise InputError(f"{option} {text!r}: points are X,Y;X,Y;... (pairs of numbers)")
    return Reference(concept, image, {"points": pts}, f"{option} {text}", [Path(img_path)])


def load_reference_folder(root) -> List[Reference]:
    """All references under ``root/<concept>/``; any unmatched or broken file is an error."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"references folder {root} does not exist")
    concepts = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not concepts:
        raise InputError(f"references folder {root} is empty: expected one subfolder per concept "
                         "holding NAME.jpg|png and NAME_mask.png (or NAME_scribble.png)")
    refs: List[Reference] = []
    for d in concepts:
        files = sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
        prompts = {}
        images = {}
        for f in files:
            suffix = next((s for s in PROMPT_FILES if f.stem.endswith(s)), None)
            if suffix is None:
                images[f.stem] = f
            else:
                prompts.setdefault(f.stem[: -len(suffix)], []).append((PROMPT_FILES[suffix], f))
        if not images and not prompts:
            raise InputError(f"concept folder {d} has no images: expected NAME.jpg|png and NAME_mask.png")
        for stem, img in sorted(images.items()):
            if stem not in prompts:
                raise InputError(f"reference image {img} has no mask: expected {d / (stem + '_mask')}.png "
                                 f"or {d / (stem + '_scribble')}.png")
            if len(prompts[stem]) > 1:
                raise InputError(f"reference image {img} has both a mask and a scribble; keep one")
        for stem, items in sorted(prompts.items()):
            if stem not in images:
                raise InputError(f"{items[0][1]} has no image: expected {d / stem}.jpg or .png")
        for stem in sorted(images):
            kind, path = prompts[stem][0]
            option = "--ref" if kind == "mask" else "--ref-scribble"
            refs.append(parse_ref(option, f"{d.name}={images[stem]}:{path}"))
    return refs


def add_reference_options(parser: argparse.ArgumentParser, folder: bool = True) -> None:
    """The ``--ref*`` options (and ``--refs FOLDER``) on ``parser``; read them with :func:`collect`."""
    g = parser.add_argument_group("references (few-shot)", __doc__.split("\n\n")[1].strip())
    for option in OPTIONS:
        g.add_argument(option, action="append", default=[], metavar=f"[CONCEPT=]IMAGE:{_value_name(option)}",
                       dest=option[2:].replace("-", "_"))
    if folder:
        g.add_argument("--refs", metavar="FOLDER", help="folder of references: one subfolder per concept")


def collect(args: argparse.Namespace) -> List[Reference]:
    """Every reference the ``--ref*`` / ``--refs`` options give; at least one."""
    refs: List[Reference] = []
    if getattr(args, "refs", None):
        refs += load_reference_folder(args.refs)
    for option in OPTIONS:
        refs += [parse_ref(option, t) for t in getattr(args, option[2:].replace("-", "_"))]
    if not refs:
        raise InputError("no references: give --ref [CONCEPT=]IMAGE:MASK (or --ref-scribble, --ref-box, "
                         "--ref-points, --refs FOLDER)")
    return refs


def any_given(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "refs", None)) or any(getattr(args, o[2:].replace("-", "_")) for o in OPTIONS)


def apply_references(segmenter, refs: Iterable[Reference]) -> None:
    """Encode every reference into ``segmenter`` (errors name where the reference came from)."""
    for r in refs:
        try:
            segmenter.add_reference(r.image, concept=r.concept, **r.prompt)
        except InputError as e:
            raise InputError(f"reference {r.where}: {e}") from e
