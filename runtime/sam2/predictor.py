"""SAM2 on single images: points / box / mask prompts, as sam2's ``SAM2ImagePredictor``.

``set_image`` runs the image encoder once; ``predict`` then runs only the
prompt encoder + mask decoder, so many prompts per image are cheap. Built on
:class:`runtime.sam2.stages.Sam2Stages` like the other flows.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np

from runtime.core.session import EngineSession, Product, serialized
from runtime.errors import InputError
from runtime.core.images import image_to_rgb, threshold_logit
from runtime.sam2.spec import POSTPROCESS, PREPROCESS
from runtime.sam2.stages import Sam2Stages

LOGIT_CLAMP = 32.0  # sam2 clamps low-res logits to [-32, 32] before upsampling


class ImagePredictor(Product):
    """Point and box prompting on one image at a time.

    >>> pred = ImagePredictor.load("engines/tiny-2.1-1024-fp16-stock")
    >>> pred.set_image(rgb)                                  # [H,W,3] uint8 RGB
    >>> masks, ious, low_res = pred.predict(points=[(x, y)], labels=[1])

    ``masks [C,H,W]`` (bool: ``sigmoid(logits) > threshold``, or float logits
    with ``return_logits``; ``threshold`` 0.5 is sam2's ``mask_threshold`` 0.0),
    ``ious [C]``, ``low_res [C,S/4,S/4]`` logits that can be fed back as
    ``mask_input``; C is 3 with ``multimask`` and 1 without. A box of shape
    ``[B,4]`` gives a leading batch axis, as in sam2.
    """

    EDGES = (PREPROCESS, POSTPROCESS)

    def __init__(self, session: EngineSession, threshold: float = 0.5):
        super().__init__(session)
        self.stages = Sam2Stages(session)
        self.threshold = threshold
        self._thr_logit = threshold_logit(threshold)
        self._enc: Optional[Dict[str, Any]] = None
        self._embed: Optional[np.ndarray] = None
        self._hw: Optional[Tuple[int, int]] = None

    def _release(self) -> None:
        self.reset()

    @serialized
    def reset(self) -> None:
        """Forget the current image."""
        self._enc = self._embed = self._hw = None

    @serialized
    def set_image(self, image: np.ndarray) -> None:
        """Encode ``image`` (``[H,W,3]`` uint8 RGB); later ``predict`` calls reuse it."""
        rgb = image_to_rgb(image, "image")
        st = self.stages
        enc = st.encode_image(rgb)
        r = st.runners["image_encoder"]
        # Kept on the backend: its output buffers may be reused by the next encoder call.
        self._enc = {k: r.keep(v) for k, v in enc.items()}
        embed = st.no_memory_feat(enc) if st.cfg["directly_add_no_mem_embed"] else st.vision_on_host(enc)
        self._embed = r.upload(embed)
        self._hw = rgb.shape[:2]

    @serialized
    def predict(self, points=None, labels=None, box=None, mask_input: Optional[np.ndarray] = None,
                multimask: bool = True, return_logits: bool = False):
        """Masks for one prompt set (or a batch of boxes ``[B,4]``); see the class docstring."""
        if self._enc is None:
            raise InputError("predict() before set_image(): call set_image(image) first")
        boxes = None if box is None else np.asarray(box, np.float32)
        if boxes is not None and boxes.ndim == 2:
            if len(boxes) == 0:
                raise InputError("box batch is empty: give boxes of shape [B,4]")
            outs = [self._predict_one(points, labels, b, mask_input, multimask, return_logits)
                    for b in boxes]
            return tuple(np.stack(parts) for parts in zip(*outs))
        return self._predict_one(points, labels, boxes, mask_input, multimask, return_logits)

    def _predict_one(self, points, labels, box, mask_input, multimask, return_logits):
        st = self.stages
        if points is None and box is None and mask_input is None:
            raise InputError("predict() needs points (with labels), a box or a mask_input")
        if points is None and box is None:
            coords, labs = st.no_points
        else:
            coords, labs = st.prompt(points, labels, box, self._hw)
        dec = st.decode(self._embed, self._enc, coords, labs, self._mask_prompt(mask_input))
        masks, ious = dec["masks"][0], dec["iou_pred"][0]
        if multimask:
            masks, ious = masks[1:], ious[1:]
        else:
            low, iou, _ = st.select_single(dec)
            masks, ious = low[None], np.array([iou], np.float32)
        low_res = np.clip(masks, -LOGIT_CLAMP, LOGIT_CLAMP).astype(np.float32)
        masks, logits = st.to_frame(low_res, self._hw, self._thr_logit, logits=return_logits)
        return np.stack(logits if return_logits else masks), ious.astype(np.float32), low_res

    def _mask_prompt(self, mask_input: Optional[np.ndarray]) -> Optional[np.ndarray]:
        """A previous ``low_res`` mask ``[1,S/4,S/4]`` (or ``[S/4,S/4]``) -> ``[1,1,S/4,S/4]``."""
        if mask_input is None:
            return None
        m = np.asarray(mask_input, np.float32)
        e4 = self.stages.size // 4
        if m.shape[-2:] != (e4, e4) or m.size != e4 * e4:
            raise InputError(
                f"mask_input must be one low-res mask of {e4}x{e4} logits (the low_res output "
                f"of an earlier predict()), got shape {m.shape}")
        if not np.isfinite(m).all():
            raise InputError("mask_input holds NaN or infinite logits; pass the low_res output of an earlier predict()")
        return m.reshape(1, 1, e4, e4)
