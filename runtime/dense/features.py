"""SAM2 encoder features by name, from a ``--model features`` model folder.

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
from typing import Dict, List

import numpy as np

from runtime.core.session import EngineSession, Product, serialized
from runtime.dense.segmenter import prepare_image, run_parts
from runtime.core.spec import StageSpec


class FeatureExtractor(Product):
    """One image in, named feature maps out (``export.build --model features``)."""

    def __init__(self, session: EngineSession):
        super().__init__(session)
        self.size = int(session.manifest.image_size)
        self.timings: Dict[str, float] = {}

    @property
    def specs(self) -> Dict[str, StageSpec]:
        return self.session.specs

    @property
    def names(self) -> List[str]:
        """Output names, trunk levels (high resolution first) then FPN levels."""
        return [t.name for sp in self.specs.values() for t in sp.outputs]

    def shapes(self) -> Dict[str, tuple]:
        """``{name: (C, h, w)}`` of one image's features."""
        return {t.name: t.concrete_shape({"batch": 1})[1:] for sp in self.specs.values() for t in sp.outputs}

    @serialized
    def extract(self, image: np.ndarray) -> Dict[str, np.ndarray]:
        """``{name: [C, h, w] float32}`` for ``image`` (``HxWx3`` uint8 RGB, or float RGB in [0,1])."""
        self.timings = {}
        t = time.perf_counter()
        x, _ = prepare_image(image, self.size, pil_uint8=False)
        self.timings["preprocess"] = time.perf_counter() - t
        env = run_parts(self.session.runners, self.specs, {"image": x}, self.timings)
        r = list(self.session.runners.values())[-1]
        out = {n: np.asarray(r.to_host(env[n]))[0] for n in self.names}
        self.timings["total"] = sum(self.timings.values())
        return out
