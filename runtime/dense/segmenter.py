"""Dense binary segmentation (SAM2-UNet, SAM2-UNeXT) over ONNX Runtime or TensorRT.

>>> seg = DenseSegmenter.load("engines/sam2-unet-large-352-fp16")
>>> prob = seg.predict(image)          # HxW float32 probability map, image HxWx3 uint8 RGB

Pre-processing follows the authors' test code (``dataset.py`` ``TestDataset``:
torchvision ``Resize((S, S))`` on a PIL image, ``ToTensor``, ``Normalize``):
a ``uint8`` image is resized with Pillow's 8-bit bilinear arithmetic,
reproduced exactly (:func:`runtime.core.edges.pil_model_input`, each pass
rounded to 8 bits, in the pass order of Pillow 13), then scaled to [0, 1]; ImageNet normalisation runs inside
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
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from runtime.core.backends.base import StageRunner
from runtime.core.edges import admits_frame, pil_model_input, pil_preprocess_feeds
from runtime.core.images import image_to_rgb, rgb_to_float
from runtime.core.resize import resize_bilinear, upsample_bilinear
from runtime.core.session import EngineSession, Product, serialized
from runtime.core.spec import StageSpec
from runtime.dense.spec import LOGITS, PIL_FILTER, PREPROCESS

def prepare_image(image: np.ndarray, size: int, pil_uint8: bool = True) -> Tuple[np.ndarray, Tuple[int, int]]:
    """Validate ``image`` and return ``([1,3,S,S] float32 in [0,1], (H, W))`` on the host.

    ``pil_uint8``: a ``uint8`` image is resized as the authors' ``transforms.Resize``
    on a PIL image does (Pillow's 8-bit bilinear, reproduced exactly:
    :func:`runtime.core.edges.pil_model_input`), then ``ToTensor``'s ``/ 255``.
    Otherwise (and for float input) the antialiased float resize (torch's
    ``F.interpolate(antialias=True)``).
    """
    rgb = image_to_rgb(image)
    if pil_uint8 and rgb.dtype == np.uint8:
        return pil_model_input(rgb, size, "bilinear"), rgb.shape[:2]
    x = resize_bilinear(rgb_to_float(rgb), (size, size), antialias=True)
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
    return sigmoid(upsample_bilinear(logits, image_hw))


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


class DenseSegmenter(Product):
    """One image in, one ``HxW`` probability map out (``export.build --model sam2-unet|sam2-unext``).

    A uint8 image inside the folder's preprocess graph's sizes becomes the
    model input there, on the backend, where the session runs it
    (``preprocess=`` on :meth:`load`); else :func:`prepare_image` on the host.
    """

    EDGES = (PREPROCESS,)

    def __init__(self, session: EngineSession):
        super().__init__(session)
        self.size = int(session.manifest.image_size)
        self.kind = session.manifest.kind
        self.timings: Dict[str, float] = {}

    @property
    def runners(self) -> Dict[str, StageRunner]:
        return self.session.runners

    @property
    def specs(self) -> Dict[str, StageSpec]:
        return self.session.specs

    @serialized
    def logits(self, image: np.ndarray) -> np.ndarray:
        """The model's ``[S,S]`` logits for ``image`` (S = the build's image size)."""
        return self._run(image)[0]

    @serialized
    def predict(self, image: np.ndarray) -> np.ndarray:
        """``HxW`` float32 probability map of ``image`` (``HxWx3`` uint8 RGB, or see README)."""
        logits, hw = self._run(image)
        t = time.perf_counter()
        prob = logits_to_probability(logits, hw)
        self.timings["postprocess"] = time.perf_counter() - t
        self.timings["total"] = sum(v for k, v in self.timings.items() if k != "total")
        return prob

    def _model_input(self, image: np.ndarray):
        """``(image [1,3,S,S] backend-native, (H, W))``: in the preprocess graph where it runs and
        admits the image (uint8 only), else :func:`prepare_image`."""
        rgb = image_to_rgb(image)
        graph = self.runners.get(PREPROCESS)
        if graph is not None and rgb.dtype == np.uint8 and admits_frame(graph.spec, rgb.shape):
            feeds = pil_preprocess_feeds(rgb, self.size, PIL_FILTER[self.kind])
            return graph.infer(feeds)["image"], rgb.shape[:2]
        return prepare_image(rgb, self.size)

    def _run(self, image: np.ndarray):
        self.timings = {}
        t = time.perf_counter()
        x, hw = self._model_input(image)
        self.timings["preprocess"] = time.perf_counter() - t
        env = run_parts(self.runners, self.specs, {"image": x}, self.timings)
        last = self.runners[list(self.specs)[-1]]
        return last.to_host(env[LOGITS])[0, 0], hw
