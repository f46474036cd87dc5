"""What a folder's reduced-precision files are calibrated and gated on, by folder kind.

A workload runs a product on an :class:`~runtime.core.session.EngineSession`
and returns the logits of every mask it makes, in a fixed order, so the FP32
run and a variant run pair up mask by mask:

- ``sam2-fewshot``: :class:`FewShotWorkload`, episodes (references with masks,
  targets; :mod:`calib.episodes`) through ``FewShotSegmenter``;
- ``sam2`` (stock SAM2): :class:`PromptWorkload`, ``ImagePredictor`` with a
  click inside each object, its box, and both, then ``VideoTracker`` on short
  clips prompted with a box on the first frame, so the mask decoder sees
  clicks and boxes and memory attention sees tracking memories.

``--calib DIR`` (``export.build``) layouts:

- few-shot: the episode layout of :mod:`calib.episodes`;
- stock SAM2::

      DIR/images/NAME.png + NAME_mask.png     one object per mask (.png/.jpg/.jpeg/.bmp)
      DIR/clips/CLIP/00000.jpg 00001.jpg ...  frames in name order
      DIR/clips/CLIP/00000_mask.png           the object on the first frame

- dense models (``sam2-unet``, ``sam2-unext``, ``features``): ``DIR/*.png|jpg``
  (:func:`load_images`).

Without ``--calib``, synthetic data is generated (shapes on textures; it
exercises every stage but does not represent real images).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from calib.episodes import (IMAGE_EXTS, CalibrationDataError, Episode, generate_episodes, load_episodes,
                            read_image, read_mask, shape_mask, texture)

Logits = List[np.ndarray]


def _hash_arrays(h, arrays) -> None:
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())


def run_episode(seg, ep: Episode) -> Logits:
    """Add the episode's references to ``seg`` (cleared first), segment its targets: logits ``[H,W]`` each."""
    seg.clear()
    for img, mask in ep.references:
        seg.add_reference(img, mask, concept=ep.concept)
    return [seg.segment(t)[ep.concept].logits for t in ep.targets]


@dataclass
class FewShotWorkload:
    """Few-shot episodes through ``FewShotSegmenter``: one logits map per target."""

    episodes: List[Episode]
    desc: str = ""
    product = "FewShotSegmenter"

    def fingerprint(self) -> str:
        h = hashlib.sha256(b"fewshot")
        for ep in self.episodes:
            h.update(ep.fingerprint().encode())
        return h.hexdigest()

    def parts(self) -> List[Tuple[str, int]]:
        """``(name, number of masks)`` of each kind of mask :meth:`run` returns, in order."""
        return [("few-shot targets", sum(len(ep.targets) for ep in self.episodes))]

    def run(self, session) -> Logits:
        from runtime.sam2.fewshot import FewShotSegmenter

        seg = FewShotSegmenter(session)
        return [logits for ep in self.episodes for logits in run_episode(seg, ep)]


@dataclass
class Clip:
    """Frames ``[H,W,3]`` uint8 and the object's mask on the first frame."""

    name: str
    frames: List[np.ndarray]
    first_mask: np.ndarray


def interior_point(mask: np.ndarray) -> Tuple[float, float]:
    """``(x, y)`` of the mask pixel farthest from the background: a click surely inside the object."""
    import cv2

    dist = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return float(x), float(y)


def box_of(mask: np.ndarray) -> List[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]


@dataclass
class PromptWorkload:
    """Stock SAM2: prompted images (click, box, both) through ``ImagePredictor``, clips through ``VideoTracker``."""

    images: List[Tuple[np.ndarray, np.ndarray]]
    clips: List[Clip] = field(default_factory=list)
    desc: str = ""
    product = "ImagePredictor"

    def fingerprint(self) -> str:
        h = hashlib.sha256(b"prompts")
        for img, m in self.images:
            _hash_arrays(h, (img, np.packbits(m)))
        for c in self.clips:
            _hash_arrays(h, (*c.frames, np.packbits(c.first_mask)))
        return h.hexdigest()

    def parts(self) -> List[Tuple[str, int]]:
        """``(name, number of masks)`` of each kind of mask :meth:`run` returns, in order."""
        return [("click / box / both", 3 * len(self.images)),
                ("tracking frames", sum(len(c.frames) for c in self.clips))]

    def run(self, session) -> Logits:
        from runtime.sam2.predictor import ImagePredictor
        from runtime.sam2.tracker import VideoTracker

        out: Logits = []
        pred = ImagePredictor(session)
        for img, mask in self.images:
            pred.set_image(img)
            click, box = [interior_point(mask)], box_of(mask)
            for prompt in (dict(points=click, labels=[1]), dict(box=box),
                           dict(points=click, labels=[1], box=box)):
                masks, _, _ = pred.predict(**prompt, multimask=False, return_logits=True)
                out.append(masks[0])
        for c in self.clips:
            tracker = VideoTracker(session)
            tracker.add_prompt(0, 1, c.frames[0], box=box_of(c.first_mask))
            out += [f[1].logits for f in tracker.propagate(c.frames)]
        return out


# ------------------------------------------------------------------ data
def generate_clips(n: int, size: int = 256, frames: int = 8, seed: int = 0) -> List[Clip]:
    """``n`` synthetic clips: one coloured shape gliding over a textured background."""
    rng = np.random.default_rng(seed)
    clips = []
    for c in range(n):
        background = texture(rng, size, size)
        mask0 = shape_mask(rng, ("disc", "square", "triangle")[c % 3], size, size)
        colour = rng.uniform(0, 1, 3).astype(np.float32)
        dy, dx = (rng.uniform(-1, 1, 2) * size / 48).round().astype(int)
        imgs = []
        for t in range(frames):
            m = np.roll(mask0, (t * dy, t * dx), axis=(0, 1))
            img = background.copy()
            img[m] = colour + rng.normal(0, 0.04, (int(m.sum()), 3))
            imgs.append((np.clip(img, 0, 1) * 255).astype(np.uint8))
        clips.append(Clip(f"gen-clip-{c:03d}", imgs, mask0))
    return clips


def _images_in(d: Path) -> List[Path]:
    return sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."))


def load_prompt_data(calib_dir: str | Path) -> Tuple[List[Tuple[np.ndarray, np.ndarray]], List[Clip]]:
    """``(images with masks, clips)`` from the stock SAM2 layout (module docstring)."""
    d = Path(calib_dir)
    if not d.is_dir():
        raise CalibrationDataError(f"calibration folder {str(d)!r} does not exist or is not a folder")
    if not (d / "images").is_dir() and not (d / "clips").is_dir():
        raise CalibrationDataError(
            f"calibration folder {str(d)!r} has neither images/ nor clips/: stock SAM2 folders calibrate on "
            "DIR/images/NAME.png + NAME_mask.png and DIR/clips/CLIP/00000.jpg ... + 00000_mask.png")
    images = []
    if (d / "images").is_dir():
        files = {p.stem: p for p in _images_in(d / "images")}
        for stem in sorted(s for s in files if not s.endswith("_mask")):
            if f"{stem}_mask" not in files:
                raise CalibrationDataError(f"{str(files[stem])!r} has no mask: add {stem}_mask.png beside it")
            img, mask = read_image(files[stem]), read_mask(files[f"{stem}_mask"])
            _check_mask(mask, img, files[f"{stem}_mask"])
            images.append((img, mask))
    clips = []
    if (d / "clips").is_dir():
        for c in sorted(p for p in (d / "clips").iterdir() if p.is_dir() and not p.name.startswith(".")):
            files = _images_in(c)
            masks = [p for p in files if p.stem.endswith("_mask")]
            frames = [p for p in files if not p.stem.endswith("_mask")]
            if not frames or len(masks) != 1 or masks[0].stem != f"{frames[0].stem}_mask":
                raise CalibrationDataError(
                    f"clip {str(c)!r}: needs frames and exactly one mask, of the first frame "
                    f"({frames[0].stem + '_mask.png' if frames else '00000_mask.png'})")
            imgs = [read_image(p) for p in frames]
            if any(i.shape != imgs[0].shape for i in imgs):
                raise CalibrationDataError(f"clip {str(c)!r}: frames of different sizes")
            mask = read_mask(masks[0])
            _check_mask(mask, imgs[0], masks[0])
            clips.append(Clip(c.name, imgs, mask))
    if not images and not clips:
        raise CalibrationDataError(f"calibration folder {str(d)!r}: images/ and clips/ are empty")
    return images, clips


def _check_mask(mask: np.ndarray, img: np.ndarray, path: Path) -> None:
    if mask.shape != img.shape[:2]:
        raise CalibrationDataError(f"{str(path)!r} is {mask.shape[1]}x{mask.shape[0]}, its image "
                                   f"{img.shape[1]}x{img.shape[0]}: a mask must have its image's size")
    if not mask.any() or mask.all():
        raise CalibrationDataError(f"{str(path)!r} is {'empty' if not mask.any() else 'all foreground'}: "
                                   "mark the object and leave background")


def load_images(calib_dir: str | Path) -> List[np.ndarray]:
    """Dense models: every image of ``DIR`` (name order)."""
    d = Path(calib_dir)
    if not d.is_dir():
        raise CalibrationDataError(f"calibration folder {str(d)!r} does not exist or is not a folder")
    files = _images_in(d)
    if not files:
        raise CalibrationDataError(f"calibration folder {str(d)!r} holds no {'/'.join(IMAGE_EXTS)} image")
    return [read_image(p) for p in files]


def workload_for(kind: str, calib_dir: Optional[Path], image_size: int, generated: int):
    """The workload a folder of ``kind`` is gated on: the user's data in ``calib_dir``, else generated."""
    if kind == "sam2-fewshot":
        if calib_dir is not None:
            eps = load_episodes(calib_dir)
            return FewShotWorkload(eps, f"{len(eps)} episodes from {calib_dir}")
        return FewShotWorkload(generate_episodes(generated, size=image_size),
                               f"{generated} generated synthetic episodes (not representative of real data)")
    if kind == "sam2":
        if calib_dir is not None:
            images, clips = load_prompt_data(calib_dir)
            return PromptWorkload(images, clips, f"{len(images)} prompted images and {len(clips)} clips "
                                                 f"from {calib_dir}")
        images = [ref for ep in generate_episodes(generated, size=image_size) for ref in ep.references]
        clips = generate_clips(max(1, generated // 3), size=image_size)
        return PromptWorkload(images, clips, f"{len(images)} generated prompted images and {len(clips)} "
                                             "generated clips (not representative of real data)")
    raise CalibrationDataError(f"no calibration workload for folder kind {kind!r}")


__all__ = ["Clip", "FewShotWorkload", "PromptWorkload", "box_of", "generate_clips", "interior_point",
           "load_images", "load_prompt_data", "workload_for"]
