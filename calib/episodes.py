"""Calibration set: few-shot episodes (references with masks + targets).

Folder layout (one sub-folder per episode, names sorted)::

    CALIB_DIR/
      <episode>/                    any folder name, e.g. "cat-001"
        ref_<i>.png                 reference image i (RGB; .png/.jpg/.jpeg/.bmp)
        ref_<i>_mask.png            its mask: any non-zero pixel is foreground
        target_<j>.png              target (query) image j, no mask needed

Each episode needs >= 1 reference (with its mask, same height and width as
its image) and >= 1 target. Reference order is the sorted ``<i>`` order
(numeric where ``<i>`` is a number). Files that match none of these names are
refused rather than silently skipped, so a typo (``ref_1_msk.png``) is caught.

Calibration data should look like deployment data: a few dozen episodes of
the objects and scenes the engines will see. :func:`generate_episodes` makes
synthetic ones (shapes on textured backgrounds) to try the tool out; they
exercise every stage but do not represent real images.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from runtime.core import imageio
from runtime.errors import InputError, UsageError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")
_REF = re.compile(r"^ref_(?P<key>[^.]+?)(?P<mask>_mask)?$")
_TARGET = re.compile(r"^target_(?P<key>[^.]+)$")
MIN_EPISODES_DEFAULT = 1


class CalibrationDataError(UsageError):
    """The calibration folder cannot be used; the message says what to fix."""


@dataclass
class Episode:
    """References ``[(image uint8 [H,W,3], mask bool [H,W]), ...]`` and target images."""

    name: str
    references: List[Tuple[np.ndarray, np.ndarray]]
    targets: List[np.ndarray]
    concept: str = "default"

    def fingerprint(self) -> str:
        import hashlib

        h = hashlib.sha256(self.name.encode())
        for img, m in self.references:
            h.update(np.ascontiguousarray(img).tobytes())
            h.update(np.packbits(m).tobytes())
        for t in self.targets:
            h.update(np.ascontiguousarray(t).tobytes())
        return h.hexdigest()


def _sort_key(k: str):
    return (0, int(k), "") if k.isdigit() else (1, 0, k)


def read_image(path: Path) -> np.ndarray:
    """Episode image -> ``[H,W,3]`` uint8 RGB (runtime.core.imageio), errors as CalibrationDataError."""
    try:
        return imageio.read_rgb(path)
    except InputError as e:
        raise CalibrationDataError(str(e)) from e


def read_mask(path: Path) -> np.ndarray:
    """Episode mask -> ``[H,W]`` bool, any non-zero pixel foreground."""
    try:
        return imageio.read_mask(path)
    except InputError as e:
        raise CalibrationDataError(str(e)) from e


def load_episode(folder: Path) -> Episode:
    """Read one episode folder (layout in the module docstring)."""
    refs, masks, targets = {}, {}, {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.is_dir():
            continue
        if p.suffix.lower() not in IMAGE_EXTS:
            raise CalibrationDataError(
                f"{str(p)!r}: unexpected file in an episode folder (images must be "
                f"{'/'.join(IMAGE_EXTS)} named ref_<i>, ref_<i>_mask or target_<j>)")
        m = _REF.match(p.stem)
        if m:
            (masks if m.group("mask") else refs)[m.group("key")] = p
            continue
        m = _TARGET.match(p.stem)
        if m:
            targets[m.group("key")] = p
            continue
        raise CalibrationDataError(
            f"{str(p)!r}: file name is none of ref_<i>, ref_<i>_mask, target_<j>")
    if not refs:
        raise CalibrationDataError(f"episode {str(folder)!r} has no reference image (ref_<i>.png)")
    if not targets:
        raise CalibrationDataError(f"episode {str(folder)!r} has no target image (target_<j>.png)")
    no_mask = sorted(set(refs) - set(masks), key=_sort_key)
    if no_mask:
        raise CalibrationDataError(
            f"episode {str(folder)!r}: reference(s) {[refs[k].name for k in no_mask]} have no "
            f"mask; add ref_<i>_mask.png beside each")
    orphan = sorted(set(masks) - set(refs), key=_sort_key)
    if orphan:
        raise CalibrationDataError(
            f"episode {str(folder)!r}: mask(s) {[masks[k].name for k in orphan]} have no "
            "reference image")
    references = []
    for k in sorted(refs, key=_sort_key):
        img, mask = read_image(refs[k]), read_mask(masks[k])
        if mask.shape != img.shape[:2]:
            raise CalibrationDataError(
                f"{str(masks[k])!r} is {mask.shape[1]}x{mask.shape[0]} but its image "
                f"{refs[k].name} is {img.shape[1]}x{img.shape[0]}: a mask must have its image's size")
        if not mask.any():
            raise CalibrationDataError(f"{str(masks[k])!r} is empty: mark the object in the mask")
        if mask.all():
            raise CalibrationDataError(f"{str(masks[k])!r} is all foreground: a mask needs background")
        references.append((img, mask))
    tgts = [read_image(targets[k]) for k in sorted(targets, key=_sort_key)]
    return Episode(folder.name, references, tgts)


def load_episodes(calib_dir: str | Path, min_episodes: int = MIN_EPISODES_DEFAULT,
                  max_episodes: Optional[int] = None) -> List[Episode]:
    """All episodes of ``calib_dir`` in name order; clear errors for unusable folders."""
    d = Path(calib_dir)
    if not d.exists():
        raise CalibrationDataError(f"calibration folder {str(d)!r} does not exist")
    if not d.is_dir():
        raise CalibrationDataError(f"calibration path {str(d)!r} is not a folder")
    folders = sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        loose = [p.name for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS][:3]
        hint = (f" (found loose images such as {loose}: put each episode in its own sub-folder)"
                if loose else "")
        raise CalibrationDataError(
            f"calibration folder {str(d)!r} holds no episode sub-folders{hint}; expected "
            "DIR/<episode>/ref_<i>.png + ref_<i>_mask.png + target_<j>.png")
    if max_episodes:
        folders = folders[:max_episodes]
    episodes = [load_episode(f) for f in folders]
    if len(episodes) < min_episodes:
        raise CalibrationDataError(
            f"calibration folder {str(d)!r} has {len(episodes)} episode(s); at least "
            f"{min_episodes} are needed for a meaningful calibration")
    return episodes


def save_episodes(calib_dir: str | Path, episodes: Sequence[Episode]) -> Path:
    """Write episodes in the folder layout (e.g. to keep a generated set)."""
    from PIL import Image

    d = Path(calib_dir)
    for ep in episodes:
        f = d / ep.name
        f.mkdir(parents=True, exist_ok=True)
        for i, (img, mask) in enumerate(ep.references):
            Image.fromarray(img).save(f / f"ref_{i}.png")
            Image.fromarray((mask.astype(np.uint8) * 255)).save(f / f"ref_{i}_mask.png")
        for j, t in enumerate(ep.targets):
            Image.fromarray(t).save(f / f"target_{j}.png")
    return d


# ------------------------------------------------------------------ synthetic
def texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random colour texture with some stripes and noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        for _ in range(3):
            fx, fy = rng.uniform(0.5, 8, 2) * 2 * np.pi / np.array([w, h])
            img[..., c] += np.sin(fx * xx + fy * yy + rng.uniform(0, 2 * np.pi)) * rng.uniform(0.05, 0.2)
    img += rng.uniform(0.3, 0.7, 3)
    img += rng.normal(0, 0.03, img.shape)
    return img


def shape_mask(rng: np.random.Generator, kind: str, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    r = rng.uniform(0.12, 0.25) * min(h, w)
    if kind == "disc":
        return (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    if kind == "square":
        return (np.abs(yy - cy) < r) & (np.abs(xx - cx) < r * rng.uniform(0.6, 1.4))
    # triangle
    return (yy - cy < r) & (yy - cy > -r + 2 * np.abs(xx - cx))


def generate_episodes(n: int, size: int = 256, refs: int = 2, targets: int = 2,
                      seed: int = 0) -> List[Episode]:
    """``n`` synthetic episodes: one coloured shape kind per episode on textured backgrounds.

    Image sizes vary a little around ``size`` (and are not square) so that the
    host resizes run as they do on real data.
    """
    if n < 1:
        raise CalibrationDataError(f"the number of generated episodes must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    kinds = ("disc", "square", "triangle")
    out = []
    for e in range(n):
        kind = kinds[e % len(kinds)]
        colour = rng.uniform(0, 1, 3).astype(np.float32)

        def one():
            h = int(size * rng.uniform(0.8, 1.2))
            w = int(size * rng.uniform(0.8, 1.2))
            img = texture(rng, h, w)
            m = shape_mask(rng, kind, h, w)
            img[m] = colour + rng.normal(0, 0.04, (int(m.sum()), 3))
            return (np.clip(img, 0, 1) * 255).astype(np.uint8), m

        references = [one() for _ in range(refs)]
        tgts = [one()[0] for _ in range(targets)]
        out.append(Episode(f"gen-{e:03d}-{kind}", references, tgts))
    return out
