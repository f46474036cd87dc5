"""Dense binary segmentation (SAM2-UNet, SAM2-UNeXT) over ONNX Runtime or TensorRT.

>>> seg = DenseSegmenter.load("engines/sam2-unet-large-352-fp16")
>>> prob = seg.predict(image)          # HxW float32 probability map, image HxWx3 uint8 RGB

Pre-processing follows the authors' test code (``dataset.py`` ``TestDataset``:
torchvision ``Resize((S, S))`` on a PIL image, ``ToTensor``, ``Normalize``):
a ``uint8`` image is resized with Pillow's 8-bit bilinear arithmetic,
reproduced exactly (:func:`runtime.resize.resize_uint8_pil`, each pass
rounded to 8 bits), then scaled to [0, 1]; ImageNet normalisation runs inside
the graph. Float images in [0, 1] (no 8-bit stage to reproduce) get the
antialiased float resize. Post-processing follows their ``test.py``: the
logits are resized to the input image's size (bilinear,
``align_corners=False``) and passed through a sigmoid. Their saved PNGs are
min-max normalised per image in float32 and truncated to 8 bits:
:func:`prob_to_png` does exactly that.

Split builds (encoder(s) + decoder) are chained by tensor name
(:func:`run_parts`), so one code path serves every build. Imports NumPy and
the backends only.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from runtime.backends import close_runners, open_runners
from runtime.backends.base import StageRunner
from runtime.dense_spec import LOGITS, manifest_dense_specs
from runtime.manifest import ManifestError, load_manifest
from runtime.preprocess import image_to_float_rgb
from runtime.resize import resize_bilinear, resize_uint8_pil
from runtime.spec import StageSpec

DENSE_KINDS = ("sam2-unet", "sam2-unext")


def prepare_image(image: np.ndarray, size: int, pil_uint8: bool = True) -> Tuple[np.ndarray, Tuple[int, int]]:
    """Validate ``image`` and return ``([1,3,S,S] float32 in [0,1], (H, W))``.

    ``pil_uint8``: a ``uint8`` image is resized as the authors' ``transforms.Resize``
    on a PIL image does (Pillow's 8-bit bilinear, reproduced exactly), then
    ``ToTensor``'s ``/ 255``. Otherwise (and for float input) the antialiased
    float resize (torch's ``F.interpolate(antialias=True)``).
    """
    rgb = image_to_float_rgb(image)
    if pil_uint8 and image.dtype == np.uint8:
        u8 = np.rint(rgb * np.float32(255.0)).astype(np.uint8)  # the image's own 8-bit RGB values
        x = resize_uint8_pil(u8, (size, size)).astype(np.float32) / np.float32(255.0)
    else:
        x = resize_bilinear(rgb, (size, size), antialias=True)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32), rgb.shape[:2]


def run_parts(runners: Mapping[str, StageRunner], specs: Mapping[str, StageSpec],
              feeds: Mapping[str, Any], timings: Optional[Dict[str, float]] = None) -> Dict[str, Any]:
    """Run the parts in order, each fed by name from ``feeds`` and earlier parts' outputs.

    Returns every tensor (backend-native values; use a runner's ``to_host``).
    """
    env: Dict[str, Any] = dict(feeds)
    for name, spec in specs.items():
        t = time.perf_counter()
        env.update(runners[name].infer({n: env[n] for n in spec.input_names}))
        if timings is not None:
            timings[name] = time.perf_counter() - t
    return env


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)  # overflow-free


def logits_to_probability(logits: np.ndarray, image_hw: Tuple[int, int]) -> np.ndarray:
    """``[S,S]`` logits -> ``[H,W]`` probability map (resize, then sigmoid, as the authors)."""
    return sigmoid(resize_bilinear(logits, image_hw, antialias=False))


def prob_to_png(prob: np.ndarray, minmax: bool = True) -> np.ndarray:
    """``uint8`` map as the authors' ``test.py`` saves it.

    Their ``res = (res - res.min()) / (res.max() - res.min() + 1e-8); (res * 255).astype(np.uint8)``
    runs in float32 (the sigmoid's dtype), where the ``1e-8`` vanishes next to a
    range near 1 (so the maximum becomes exactly 255), and ``astype`` truncates.
    ``minmax=False``: ``round(255 * p)`` instead.
    """
    p = np.asarray(prob, np.float32)
    if not minmax:
        return np.clip(np.rint(p * np.float32(255.0)), 0, 255).astype(np.uint8)
    lo, hi = p.min(), p.max()
    p = (p - lo) / (hi - lo + np.float32(1e-8))
    return (p * np.float32(255.0)).astype(np.uint8)


def open_dense(engine_dir: str | Path, kinds: Sequence[str], backend: str = "auto", threads: int = 0,
               providers: Optional[Sequence[str]] = None):
    """``(manifest, specs, runners)`` of a dense / features engines folder of one of ``kinds``."""
    manifest = load_manifest(engine_dir, stages=())
    kind = manifest["model"].get("kind")
    if kind not in kinds:
        loader = manifest.get("loader") or "runtime.FewShotSegmenter"
        raise ManifestError(f"{str(engine_dir)!r} holds a {kind!r} model; load it with {loader}")
    specs = manifest_dense_specs(manifest)
    missing = [p for p in specs if p not in manifest["stages"]]
    if missing:
        raise ManifestError(f"{str(engine_dir)!r}: the manifest lists no entry for parts {missing}; rebuild")
    runners = open_runners(engine_dir, manifest, backend, threads=threads, providers=providers, specs=specs)
    return manifest, specs, runners


class DenseSegmenter:
    """One image in, one ``HxW`` probability map out."""

    def __init__(self, runners: Mapping[str, StageRunner], manifest: dict, specs: Mapping[str, StageSpec]):
        self.runners = dict(runners)
        self.manifest = manifest
        self.specs = dict(specs)
        self.size = int(manifest["model"]["image_size"])
        self.kind = manifest["model"]["kind"]
        self.timings: Dict[str, float] = {}

    @classmethod
    def load(cls, engine_dir: str | Path, backend: str = "auto", threads: int = 0,
             providers: Optional[Sequence[str]] = None) -> "DenseSegmenter":
        """Open a folder made by ``python -m export.build --model sam2-unet|sam2-unext``."""
        manifest, specs, runners = open_dense(engine_dir, DENSE_KINDS, backend, threads, providers)
        return cls(runners, manifest, specs)

    @property
    def backend(self) -> str:
        return next(iter(self.runners.values())).backend_name

    def close(self) -> None:
        close_runners(self.runners)

    def __enter__(self) -> "DenseSegmenter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def logits(self, image: np.ndarray) -> np.ndarray:
        """The model's ``[S,S]`` logits for ``image`` (S = the build's image size)."""
        return self._run(image)[0]

    def predict(self, image: np.ndarray) -> np.ndarray:
        """``HxW`` float32 probability map of ``image`` (``HxWx3`` uint8 RGB, or see README)."""
        logits, hw = self._run(image)
        t = time.perf_counter()
        prob = logits_to_probability(logits, hw)
        self.timings["postprocess"] = time.perf_counter() - t
        self.timings["total"] = sum(v for k, v in self.timings.items() if k != "total")
        return prob

    def _run(self, image: np.ndarray):
        self.timings = {}
        t = time.perf_counter()
        x, hw = prepare_image(image, self.size)
        self.timings["preprocess"] = time.perf_counter() - t
        env = run_parts(self.runners, self.specs, {"image": x}, self.timings)
        last = list(self.runners.values())[-1]
        return last.to_host(env[LOGITS])[0, 0], hw
