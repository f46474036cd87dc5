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
