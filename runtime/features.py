"""SAM2 encoder features by name, from a ``--model features`` engines folder.

>>> fx = FeatureExtractor.load("engines/features-tiny-1024-fp16")
>>> feats = fx.extract(image)      # {"trunk_s4": [C,S/4,S/4], ..., "fpn_s16": [256,S/16,S/16]}

The image is resized to the build's square size (antialiased bilinear, as the
few-shot runtime does) and ImageNet-normalised inside the graph; outputs are
the Hiera stage outputs ``trunk_s4 .. trunk_s32`` and, for builds with
``--fpn``, the FPN neck's ``fpn_s4, fpn_s8, fpn_s16`` (SAM2's
``backbone_fpn``). Imports NumPy and the backends only.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from runtime.backends import close_runners
from runtime.backends.base import StageRunner
from runtime.dense import open_dense, prepare_image, run_parts
from runtime.spec import StageSpec


class FeatureExtractor:
    """One image in, named feature maps out."""

    def __init__(self, runners: Mapping[str, StageRunner], manifest: dict, specs: Mapping[str, StageSpec]):
        self.runners = dict(runners)
        self.manifest = manifest
        self.specs = dict(specs)
        self.size = int(manifest["model"]["image_size"])
        self.timings: Dict[str, float] = {}

    @classmethod
    def load(cls, engine_dir: str | Path, backend: str = "auto", threads: int = 0,
             providers: Optional[Sequence[str]] = None) -> "FeatureExtractor":
        """Open a folder made by ``python -m export.build --model features``."""
        manifest, specs, runners = open_dense(engine_dir, ("features",), backend, threads, providers)
        return cls(runners, manifest, specs)

    @property
    def names(self) -> List[str]:
        """Output names, trunk levels (high resolution first) then FPN levels."""
        return [t.name for sp in self.specs.values() for t in sp.outputs]

    @property
    def backend(self) -> str:
        return next(iter(self.runners.values())).backend_name

    def shapes(self) -> Dict[str, tuple]:
        """``{name: (C, h, w)}`` of one image's features."""
        return {t.name: t.concrete_shape({"batch": 1})[1:] for sp in self.specs.values() for t in sp.outputs}

    def close(self) -> None:
        close_runners(self.runners)

    def __enter__(self) -> "FeatureExtractor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def extract(self, image: np.ndarray) -> Dict[str, np.ndarray]:
        """``{name: [C, h, w] float32}`` for ``image`` (``HxWx3`` uint8 RGB, or float RGB in [0,1])."""
        self.timings = {}
        t = time.perf_counter()
        x, _ = prepare_image(image, self.size, pil_uint8=False)
        self.timings["preprocess"] = time.perf_counter() - t
        env = run_parts(self.runners, self.specs, {"image": x}, self.timings)
        r = list(self.runners.values())[-1]
        out = {n: np.asarray(r.to_host(env[n]))[0] for n in self.names}
        self.timings["total"] = sum(self.timings.values())
        return out
