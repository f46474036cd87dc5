"""Small dense-model builds shared by the dense tests (built once per test session).

hiera-tiny trunks at 64 px, the 2-block test DINOv2 at 112 px, random weights
with a fixed seed: ``assemble_dense(choice, random_weights=True, seed=0)``
gives the PyTorch model a folder was exported from.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

SIZE = 64
_ROOT = Path(tempfile.mkdtemp(prefix="dense-tests-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)

# name -> export.build arguments
BUILDS = {
    "unet": ["--model", "sam2-unet", "--precision", "fp32"],
    "unext-split-fp16": ["--model", "sam2-unext", "--dino-config", "tiny", "--split",
                         "--precision", "fp16", "--fp32-parts", "dino_encoder"],
    "features-fpn": ["--model", "features", "--fpn", "--precision", "fp32"],
}


def choice_for(name: str):
    from export.dense.dinov2 import TINY_DINO
    from export.dense.models import DenseChoice

    return {
        "unet": DenseChoice.default("sam2-unet", trunk="tiny", image_size=SIZE),
        "unext-split-fp16": DenseChoice.default("sam2-unext", trunk="tiny", image_size=SIZE,
                                                dino=TINY_DINO, split=True),
        "features-fpn": DenseChoice.default("features", trunk="tiny", image_size=SIZE, fpn=True),
    }[name]


@lru_cache(maxsize=None)
def built(name: str) -> Path:
    """Export ``BUILDS[name]`` (tiny, 64 px, random weights, ONNX only) once; returns the folder."""
    from export.build import main

    out = _ROOT / name
    rc = main([*BUILDS[name], "--trunk", "tiny", "--image-size", str(SIZE), "--random-weights",
               "--max-batch", "2", "--skip-tensorrt", "--out", str(out)])
    assert rc == 0, f"build {name} failed"
    return out


@lru_cache(maxsize=None)
def torch_model(name: str):
    """The PyTorch model ``built(name)`` was exported from."""
    from export.dense.models import assemble_dense

    model, _ = assemble_dense(choice_for(name), random_weights=True, seed=0)
    return model


@lru_cache(maxsize=None)
def _natural_images():
    """Four natural-looking JPEG photos (made here: no download): smooth shading, textured
    regions with edges, a few objects, sensor noise, JPEG-compressed at quality 85; the sizes of
    common camera / dataset images, none square."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(2024)
    out = []
    for h, w in ((375, 500), (480, 640), (333, 250), (427, 640)):
        yy, xx = np.mgrid[:h, :w] / max(h, w)
        base = np.stack([0.6 - 0.3 * yy, 0.5 + 0.2 * xx, 0.4 + 0.3 * yy * xx], -1) * 255
        tex = sum(cv2.resize(rng.normal(0, 1, (h // s + 1, w // s + 1)), (w, h), interpolation=cv2.INTER_CUBIC)
                  * (40 / s ** 0.5) for s in (2, 8, 32))
        img = base + tex[..., None]
        for _ in range(6):  # objects with sharp edges and their own texture
            m = np.zeros((h, w), np.uint8)
            center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(w // 12, w // 4)), int(rng.integers(h // 12, h // 4)))
            cv2.ellipse(m, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
            colour = rng.uniform(0, 255, 3)
            img = np.where(m[..., None] > 0, 0.7 * colour + 0.3 * img + rng.normal(0, 12, (h, w, 1)), img)
        img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])
        out.append(cv2.imdecode(buf, cv2.IMREAD_COLOR))
    return tuple(out)


def natural_images():
    """See :func:`_natural_images` (uint8 ``[H,W,3]``)."""
    return list(_natural_images())
