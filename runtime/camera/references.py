"""Reference images + masks for the camera loop, checked before any engine is loaded.

Two ways to give them:

* a folder with one subfolder per concept, each holding ``NAME.jpg|png`` and its
  mask ``NAME_mask.png`` (any number of pairs per concept)::

      refs/dog/a.jpg  refs/dog/a_mask.png  refs/cat/x.png  refs/cat/x_mask.png

* ``--ref CONCEPT:IMAGE:MASK`` on the command line (repeatable).

Images are read with OpenCV (BGR) and converted to RGB; masks are read as one
channel, foreground = any non-zero pixel. Every error names the offending file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Sequence

import numpy as np

from runtime import imageio
from runtime.preprocess import InputError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
MASK_SUFFIX = "_mask"


class ReferenceError(ValueError):
    """A reference folder / file that cannot be used; the message names the file."""


@dataclass
class Reference:
    concept: str
    image: np.ndarray  # [H,W,3] uint8 RGB
    mask: np.ndarray   # [H,W] bool
    image_path: Path
    mask_path: Path


def read_rgb(path: Path) -> np.ndarray:
    """Reference image -> ``[H,W,3]`` uint8 RGB, or ReferenceError naming the file."""
    try:
        return imageio.read_rgb(path)
    except InputError as e:
        raise ReferenceError(f"reference image: {e}") from e


def read_mask(path: Path) -> np.ndarray:
    """Mask file -> ``[H,W]`` bool, or ReferenceError naming the file."""
    try:
        return imageio.read_mask(path)
    except InputError as e:
        raise ReferenceError(f"mask: {e}") from e


def load_reference(concept: str, image_path, mask_path) -> Reference:
    """One checked reference: readable files, same size, mask neither empty nor full."""
    image_path, mask_path = Path(image_path), Path(mask_path)
    if not concept:
        raise ReferenceError(f"empty concept name for reference {image_path}")
    image, mask = read_rgb(image_path), read_mask(mask_path)
    if mask.shape != image.shape[:2]:
        raise ReferenceError(
            f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} (WxH) but image {image_path} is "
            f"{image.shape[1]}x{image.shape[0]}; a mask must have its image's size")
    if not mask.any():
        raise ReferenceError(f"mask {mask_path} is empty (no non-zero pixel)")
    if mask.all():
        raise ReferenceError(f"mask {mask_path} is all foreground; it needs background pixels too")
    return Reference(concept, image, mask, image_path, mask_path)


def load_reference_folder(root) -> List[Reference]:
    """All references under ``root/<concept>/``; any unmatched or broken file is an error."""
    root = Path(root)
    if not root.is_dir():
        raise ReferenceError(f"references folder {root} does not exist")
    concepts = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not concepts:
        raise ReferenceError(f"references folder {root} is empty: expected one subfolder per concept "
                             f"holding NAME.jpg|png and NAME{MASK_SUFFIX}.png")
    refs: List[Reference] = []
    for d in concepts:
        files = sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
        masks = {f.stem[: -len(MASK_SUFFIX)]: f for f in files if f.stem.endswith(MASK_SUFFIX)}
        images = {f.stem: f for f in files if not f.stem.endswith(MASK_SUFFIX)}
        if not images and not masks:
            raise ReferenceError(f"concept folder {d} has no images: expected NAME.jpg|png and "
                                 f"NAME{MASK_SUFFIX}.png")
        for stem, img in sorted(images.items()):
            if stem not in masks:
                raise ReferenceError(f"reference image {img} has no mask: expected {d / (stem + MASK_SUFFIX)}.png")
        for stem, m in sorted(masks.items()):
            if stem not in images:
                raise ReferenceError(f"mask {m} has no image: expected {d / stem}.jpg or .png")
        for stem in sorted(images):
            refs.append(load_reference(d.name, images[stem], masks[stem]))
    return refs


def parse_ref_arg(arg: str) -> Reference:
    """``CONCEPT:IMAGE:MASK`` -> a checked :class:`Reference`."""
    parts = arg.split(":")
    if len(parts) != 3 or not all(parts):
        raise ReferenceError(f"--ref {arg!r}: expected CONCEPT:IMAGE:MASK (three non-empty parts)")
    return load_reference(*parts)


def collect_references(folder=None, ref_args: Sequence[str] = ()) -> List[Reference]:
    """The folder's references plus the ``--ref`` ones; at least one in total."""
    refs: List[Reference] = []
    if folder is not None:
        refs += load_reference_folder(folder)
    refs += [parse_ref_arg(a) for a in ref_args]
    if not refs:
        raise ReferenceError("no references: give --refs FOLDER and/or --ref CONCEPT:IMAGE:MASK")
    return refs


def apply_references(segmenter, refs: Iterable[Reference]) -> None:
    """Encode every reference into ``segmenter`` (errors name the files)."""
    for r in refs:
        try:
            segmenter.add_reference(r.image, r.mask, concept=r.concept)
        except InputError as e:
            raise ReferenceError(f"reference {r.image_path} / {r.mask_path}: {e}") from e
