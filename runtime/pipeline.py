"""The few-shot pipeline: chains the four stage runners (fewshot-pipeline.md).

``add_reference`` runs the image encoder, the mask decoder (object pointer)
and the memory encoder once per reference and caches the results;
``segment`` runs the image encoder once per frame, then memory attention and
the mask decoder once per concept against the cached memories. Written once
against :class:`runtime.backends.base.StageRunner`, so it is the same code
for ONNX Runtime and TensorRT.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from runtime.backends import close_runners, open_runners
from runtime.backends.base import StageRunner
from runtime.manifest import CONSTANTS_NAME, load_manifest
from runtime.memory import pointer_pos_enc, select_memories, select_pointers
from runtime.preprocess import (
    InputError,
    check_mask,
    image_to_float_rgb,
    image_to_model_input,
    logits_to_image,
    mask_downsample,
    mask_to_model_logits,
    threshold_logit,
)
from runtime.resize import resize_bilinear
from runtime.results import ConceptResult, SegmentationResult
from runtime.spec import STAGES

NO_OBJ_SCORE = -1024.0  # sam2's logit for "object absent"
_BINARIZED_LOGIT = 1e4  # sigmoid() of +-1e4 is exactly 1 / 0 in float32


@dataclass
class ReferenceMemory:
    """What one reference contributes: ``maskmem [64,h,w]`` and ``obj_ptr [256]``."""

    maskmem: np.ndarray
    obj_ptr: np.ndarray


class FewShotSegmenter:
    """k references (image + mask, or points/box) per concept -> masks in new images.

    >>> seg = FewShotSegmenter.load("engines/tiny-2.1-1024-fp16", backend="onnxruntime")
    >>> seg.add_reference(image, mask, concept="dog")
    >>> res = seg.segment(frame)            # res["dog"].mask, .logits, .score
    """

    def __init__(self, runners: Mapping[str, StageRunner], manifest: dict,
                 constants: Mapping[str, np.ndarray], threshold: float = 0.5):
        missing = [s for s in STAGES if s not in runners]
        if missing:
            raise ValueError(f"runners for stages {missing} are missing")
        self.runners = dict(runners)
        self.manifest = manifest
        self.cfg = manifest["model_config"]
        self.consts = {k: np.asarray(v) for k, v in constants.items()}
        self.size = int(self.cfg["image_size"])
        self.threshold = threshold
        self._thr_logit = threshold_logit(threshold)
        self._refs: "OrderedDict[str, List[ReferenceMemory]]" = OrderedDict()
        self._feeds: Dict[str, Dict[str, Any]] = {}  # per concept, backend-native
        # Decoder prompt for "no prompt" (one padding point) and "no mask input".
        e4 = self.size // 4
        self._no_points = (np.zeros((1, 1, 2), np.float32), -np.ones((1, 1), np.float32))
        self._no_mask = np.zeros((1, 1, e4, e4), np.float32)

    # -------------------------------------------------------------- lifecycle
    @classmethod
    def load(cls, engine_dir: str | Path, backend: str = "auto", threshold: float = 0.5,
             threads: int = 0, providers: Optional[Sequence[str]] = None) -> "FewShotSegmenter":
        """Open an engines folder made by ``python -m export.build``."""
        threshold_logit(threshold)
        manifest = load_manifest(engine_dir)
        with np.load(Path(engine_dir) / CONSTANTS_NAME) as z:
            constants = {k: z[k] for k in z.files}
        runners = open_runners(engine_dir, manifest, backend, threads=threads, providers=providers)
        return cls(runners, manifest, constants, threshold)

    def close(self) -> None:
        self._feeds.clear()
        close_runners(self.runners)

    def __enter__(self) -> "FewShotSegmenter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def backend(self) -> str:
        return self.runners["image_encoder"].backend_name

    @property
    def concepts(self) -> List[str]:
        return list(self._refs)

    def num_references(self, concept: str) -> int:
        return len(self._refs.get(concept, []))

    @property
    def stage_calls(self) -> Dict[str, int]:
        """How often each stage ran since load (tests check reference caching)."""
        return {s: r.calls for s, r in self.runners.items()}

    def clear(self, concept: Optional[str] = None) -> None:
        """Forget all references (or one concept's)."""
        if concept is None:
            self._refs.clear()
            self._feeds.clear()
        else:
            self._refs.pop(concept, None)
            self._feeds.pop(concept, None)

    # -------------------------------------------------------------- internals
    def _encode_image(self, rgb: np.ndarray):
        x = image_to_model_input(rgb, self.size)
        return self.runners["image_encoder"].infer({"image": x})

    def _decode(self, image_embed, enc: Mapping[str, Any], coords: np.ndarray,
                labels: np.ndarray, mask_input: Optional[np.ndarray]) -> Dict[str, np.ndarray]:
        feeds = {
            "image_embed": image_embed,
            "feat_s1": enc["feat_s1"],
            "feat_s0": enc["feat_s0"],
            "point_coords": coords.astype(np.float32),
            "point_labels": labels.astype(np.float32),
            "mask_input": mask_input if mask_input is not None else self._no_mask,
            "has_mask_input": np.array([1.0 if mask_input is not None else 0.0], np.float32),
        }
        r = self.runners["mask_decoder"]
        return {k: r.to_host(v) for k, v in r.infer(feeds).items()}

    def _select_single(self, dec: Mapping[str, np.ndarray]):
        """sam2's ``multimask_output=False`` choice: (low-res logits, iou, obj_ptr) of batch 0."""
        masks, ious = dec["masks"][0], dec["iou_pred"][0]
        i = 0
        if self.cfg["dynamic_multimask_via_stability"]:
            delta = self.cfg["dynamic_multimask_stability_delta"]
            single = masks[0]
            area_i = float(np.sum(single > delta))
            area_u = float(np.sum(single > -delta))
            stability = area_i / area_u if area_u > 0 else 1.0
            if stability < self.cfg["dynamic_multimask_stability_thresh"]:
                i = 1 + int(np.argmax(ious[1:]))
        return masks[i], float(ious[i]), dec["obj_ptr"][0, 0]

    def _select_multi(self, dec: Mapping[str, np.ndarray]):
        """``multimask_output=True``: the best of masks 1..3 by predicted IoU."""
        ious = dec["iou_pred"][0, 1:]
        i = 1 + int(np.argmax(ious))
        tok = i if self.cfg["use_multimask_token_for_obj_ptr"] else 0
        return dec["masks"][0, i], float(dec["iou_pred"][0, i]), dec["obj_ptr"][0, tok]

    def _gate(self, low_res: np.ndarray, obj_ptr: np.ndarray, score_logit: float):
        """Object-score gating of masks and pointers (configs with the score head)."""
        if not self.cfg["pred_obj_scores"]:
            return low_res, obj_ptr
        appearing = score_logit > 0
        if not appearing:
            low_res = np.full_like(low_res, NO_OBJ_SCORE)
        lam = (1.0 / (1.0 + np.exp(-score_logit))) if self.cfg["soft_no_obj_ptr"] else float(appearing)
        if self.cfg["fixed_no_obj_ptr"]:
            obj_ptr = lam * obj_ptr
        obj_ptr = obj_ptr + (1 - lam) * self.consts["no_obj_ptr"]
        return low_res, obj_ptr.astype(np.float32)

    def _encode_memory(self, vision_feat, high_res_logits: np.ndarray, score_logit: float) -> np.ndarray:
        r = self.runners["memory_encoder"]
        out = r.infer({"vision_feat": vision_feat, "mask_logits": high_res_logits[None, None]})
        maskmem = r.to_host(out["maskmem_features"])[0]
        if "no_obj_embed_spatial" in self.consts and not score_logit > 0:
            maskmem = maskmem + self.consts["no_obj_embed_spatial"][:, None, None]
        return maskmem.astype(np.float32)

    def _prompt(self, points, labels, box, hw):
        """User prompts in image pixels -> ``[1,P,2]`` model pixels, ``[1,P]`` labels."""
        coords, labs = [], []
        if box is not None:
            b = np.asarray(box, np.float32).reshape(-1)
            if b.size != 4 or not (b[2] > b[0] and b[3] > b[1]):
                raise InputError(f"box must be (x0, y0, x1, y1) with x1 > x0 and y1 > y0, got {box}")
            coords += [b[:2], b[2:]]
            labs += [2, 3]
        if points is not None:
            p = np.asarray(points, np.float32)
            if p.ndim != 2 or p.shape[1] != 2 or len(p) == 0:
                raise InputError(f"points must be a list of (x, y), got shape {p.shape}")
            lab = np.ones(len(p)) if labels is None else np.asarray(labels)
            if lab.shape != (len(p),):
                raise InputError(f"{len(p)} points but {lab.size} labels; give one label per point")
            if not np.isin(lab, (0, 1)).all():
                raise InputError("point labels must be 1 (foreground) or 0 (background)")
            coords += list(p)
            labs += list(lab)
        c = np.asarray(coords, np.float32)
        h, w = hw
        if (c < 0).any() or (c[:, 0] > w).any() or (c[:, 1] > h).any():
            raise InputError(f"prompt coordinates outside the {w}x{h} image: {c.tolist()}")
        c = c * np.array([self.size / w, self.size / h], np.float32)
        return c[None], np.asarray(labs, np.float32)[None]

    # ------------------------------------------------------------- references
    def add_reference(self, image: np.ndarray, mask: Optional[np.ndarray] = None, *,
                      points=None, labels=None, box=None, concept: str = "default") -> None:
        """Encode one reference of ``concept`` (image ``[H,W,3]`` uint8 RGB, mask ``[H,W]`` bool).

        Give either a mask or points/box. Its memory is computed once and cached.
        """
        if not isinstance(concept, str) or not concept:
            raise InputError("concept must be a non-empty string")
        if mask is None and points is None and box is None:
            raise InputError("add_reference needs a mask, or points/box")
        if mask is not None and (points is not None or box is not None):
            raise InputError("give a mask or points/box for a reference, not both")
        if labels is not None and points is None:
            raise InputError("labels given without points")
        rgb = image_to_float_rgb(image, "reference image")
        if mask is not None:
            m = check_mask(mask, rgb.shape[:2])
            ref = self._mask_reference(self._encode_image(rgb), m)
        else:
            coords, labs = self._prompt(points, labels, box, rgb.shape[:2])
            ref = self._point_reference(self._encode_image(rgb), coords, labs)
        self._refs.setdefault(concept, []).append(ref)
        self._feeds.pop(concept, None)

    def _mask_reference(self, enc, mask01: np.ndarray) -> ReferenceMemory:
        hard, _, high = mask_to_model_logits(mask01, self.size)
        dense = mask_downsample(hard, self.consts["mask_downsample_weight"],
                                self.consts["mask_downsample_bias"])
        dec = self._decode(enc["vision_feat"], enc, *self._no_points, dense)
        _, _, obj_ptr = self._select_single(dec)
        # sam2's _use_mask_as_output: the object is present (mask non-empty).
        _, obj_ptr = self._gate(np.zeros(1, np.float32), obj_ptr, 10.0)
        maskmem = self._encode_memory(enc["vision_feat"], high, 10.0)
        return ReferenceMemory(maskmem, obj_ptr.astype(np.float32))

    def _point_reference(self, enc, coords, labels) -> ReferenceMemory:
        r = self.runners["image_encoder"]
        vision = r.to_host(enc["vision_feat"])
        pix = vision + self.consts["no_mem_embed"].reshape(1, -1, 1, 1)
        dec = self._decode(pix, enc, coords, labels, None)
        low, _, obj_ptr = self._select_single(dec)
        score = float(dec["object_score_logits"][0, 0])
        low, obj_ptr = self._gate(low, obj_ptr, score)
        high = resize_bilinear(low, (self.size, self.size), antialias=False)
        if self.cfg["binarize_mask_from_pts_for_mem_enc"]:
            high = np.where(high > 0, _BINARIZED_LOGIT, -_BINARIZED_LOGIT).astype(np.float32)
        maskmem = self._encode_memory(enc["vision_feat"], high, score)
        return ReferenceMemory(maskmem, obj_ptr)

    def _concept_feeds(self, concept: str) -> Dict[str, Any]:
        """Memory-attention inputs for a concept, assembled once and kept backend-native."""
        if concept in self._feeds:
            return self._feeds[concept]
        refs = self._refs[concept]
        k = len(refs)
        mems = select_memories(k, self.cfg["num_maskmem"])
        ptrs = select_pointers(k, self.cfg["max_obj_ptrs_in_encoder"])
        base_pos = self.consts["maskmem_pos_enc"][0]
        tpos = self.consts["maskmem_tpos_enc"]
        host = {
            "mem_feats": np.stack([refs[j].maskmem for j, _ in mems]),
            "mem_pos": np.stack([base_pos + tpos[t][:, None, None] for _, t in mems]),
            "obj_ptrs": np.stack([refs[j].obj_ptr for j, _ in ptrs]),
            "obj_ptr_pos": pointer_pos_enc([d for _, d in ptrs], k, self.cfg, self.consts),
        }
        r = self.runners["memory_attention"]
        feeds = {n: r.upload(a.astype(np.float32)) for n, a in host.items()}
        self._feeds[concept] = feeds
        return feeds

    # ----------------------------------------------------------------- target
    def segment(self, image: np.ndarray) -> SegmentationResult:
        """Masks of every concept in ``image`` (``[H,W,3]`` uint8 RGB)."""
        if not self._refs:
            raise InputError("segment() before any reference: call add_reference() first")
        t0 = time.perf_counter()
        rgb = image_to_float_rgb(image, "image")
        x = image_to_model_input(rgb, self.size)
        t1 = time.perf_counter()
        enc = self.runners["image_encoder"].infer({"image": x})
        t2 = time.perf_counter()
        timings = {"preprocess": t1 - t0, "image_encoder": t2 - t1,
                   "memory_attention": 0.0, "mask_decoder": 0.0, "postprocess": 0.0}
        results = {}
        for concept in self._refs:
            ta = time.perf_counter()
            feeds = dict(self._concept_feeds(concept), vision_feat=enc["vision_feat"])
            cond = self.runners["memory_attention"].infer(feeds)["conditioned_feat"]
            tb = time.perf_counter()
            dec = self._decode(cond, enc, *self._no_points, None)
            tc = time.perf_counter()
            low, score, ptr = self._select_multi(dec)
            low, _ = self._gate(low, ptr, float(dec["object_score_logits"][0, 0]))
            logits = logits_to_image(low, rgb.shape[:2])
            results[concept] = ConceptResult(mask=logits > self._thr_logit, logits=logits, score=score)
            td = time.perf_counter()
            timings["memory_attention"] += tb - ta
            timings["mask_decoder"] += tc - tb
            timings["postprocess"] += td - tc
        timings["total"] = time.perf_counter() - t0
        return SegmentationResult(results, timings)
