"""sam2's host logic between the four SAM2 stage runners of a session.

Every flow built on a model folder (few-shot segmentation, the image predictor,
the video tracker) goes through this class, so the pieces of sam2 that are
Python control flow rather than graph (mask selection, object-score gating,
prompt scaling, memory encoding, ``_use_mask_as_output``) exist once.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from runtime.core.backends.base import StageRunner
from runtime.core.edges import admits_frame
from runtime.core.session import EngineSession
from runtime.errors import InputError, ModelFolderError, ProfileLimitError, UsageError
from runtime.core.images import rgb_to_float
from runtime.core.resize import resize_bilinear, upsample_bilinear
from runtime.sam2.inputs import (
    image_to_model_input,
    logits_to_image,
    mask_downsample,
    postprocess_feeds,
    preprocess_feeds,
    video_frame_to_model_input,
    video_preprocess_feeds,
)
from runtime.sam2.memory import memory_pos_table, pack_objects, pack_positions, positions_key
from runtime.sam2.spec import POSTPROCESS, PREPROCESS, STAGES, VIDEO_PREPROCESS

NO_OBJ_SCORE = -1024.0  # sam2's logit for "object absent"
BINARIZED_LOGIT = 1e4  # sigmoid() of +-1e4 is exactly 1 / 0 in float32
MASK_OUT_SCALE, MASK_OUT_BIAS = 20.0, -10.0  # sam2's _use_mask_as_output
# Packed memory position encodings kept uploaded: at most this many, and beyond the newest at most
# this many bytes in all (8 tracked objects at 1024 px take 56 MB; an edge device has little to spare).
POSITIONS_KEPT, POSITIONS_MAX_BYTES = 4, 64 << 20


def objects_per_call_for(stages: "Sam2Stages", asked: Optional[int]) -> int:
    """Objects per memory-attention / decoder call: ``asked`` (checked); by default the folder's
    maximum on accelerators, and 1 on ONNX Runtime's CPU provider, where batched calls measured
    slower than one by one (bench/reports/batched-objects.md)."""
    limit = stages.axis_max("objects")
    if asked is None:
        return 1 if stages.runners["memory_attention"].computes_on_cpu else limit
    if isinstance(asked, bool) or not isinstance(asked, int) or not 1 <= asked <= limit:
        raise UsageError(f"objects_per_call must be an integer from 1 to {limit} (this model folder's "
                         f"objects axis), got {asked!r}")
    return asked


@dataclass
class FrameOutput:
    """sam2's per-object, per-frame output: what later frames' memory is made of.

    ``low_res [S/4,S/4]`` mask logits (after gating), ``obj_ptr [256]``,
    ``object_score`` the object-score logit, ``iou`` the predicted IoU, and
    ``maskmem [64,S/16,S/16]`` once the memory encoder ran.
    """

    low_res: np.ndarray
    obj_ptr: np.ndarray
    object_score: float
    iou: float
    maskmem: Optional[np.ndarray] = None


class Sam2Stages:
    """sam2's host logic over a session's ``image_encoder``, ``memory_encoder``,
    ``memory_attention`` and ``mask_decoder`` runners.

    ``cfg`` is the manifest's ``model_config`` (sam2's flags), ``consts`` the
    arrays of ``constants.npz``, ``size`` the square model input size S.
    """

    def __init__(self, session: EngineSession):
        missing = [s for s in STAGES if s not in session.runners]
        if missing:
            raise ModelFolderError(f"{str(session.folder.path)!r} has no runners for the SAM2 stages {missing}")
        if "mem_valid" not in session.specs["memory_attention"].input_names:
            raise ModelFolderError(
                f"{str(session.folder.path)!r} was built before memory attention took several objects "
                "per call (its inputs have no objects axis); rebuild it with this version of export.build")
        self.session = session
        self.cfg = session.manifest.model_config
        self.consts = session.constants
        self.size = int(self.cfg["image_size"])
        e4 = self.size // 4
        # Decoder prompt for "no prompt" (one padding point) and "no mask input".
        self.no_points = self.no_points_for(1)
        self.no_mask = np.zeros((1, 1, e4, e4), np.float32)
        # positions_key -> (uploaded mem_pos, its bytes), least recently used first
        self._positions: "OrderedDict[tuple, Tuple[Any, int]]" = OrderedDict()

    @cached_property
    def pos_table(self) -> np.ndarray:
        """``[num_maskmem,64,S/16,S/16]`` (:func:`~runtime.sam2.memory.memory_pos_table`), made on
        first use: the image predictor never attends to memory."""
        return memory_pos_table(self.consts)

    @property
    def runners(self) -> Dict[str, StageRunner]:
        return self.session.runners

    def axis_max(self, axis: str) -> int:
        """Largest size of a dynamic axis this model folder was built for."""
        return self.session.axis_max(axis)

    @staticmethod
    def no_points_for(n: int) -> Tuple[np.ndarray, np.ndarray]:
        """The decoder prompt "no prompt" (one padding point) for ``n`` objects:
        ``[n,1,2]`` coordinates, ``[n,1]`` labels."""
        return np.zeros((n, 1, 2), np.float32), -np.ones((n, 1), np.float32)

    # ----------------------------------------------------------------- stages
    def _edge_for(self, stage: str, hw: Tuple[int, int]) -> Optional[StageRunner]:
        """The session's runner of edge ``stage`` if it runs and its profile admits ``[H,W]`` frames."""
        r = self.runners.get(stage)
        return r if r is not None and admits_frame(r.spec, hw) else None

    def on_backend(self, rgb: np.ndarray, video: bool = False) -> bool:
        """Whether ``rgb`` (:func:`~runtime.core.images.image_to_rgb`) becomes the model input in the
        session's preprocess graph (``video``: its video preprocess graph): a uint8 frame inside its
        profile's sizes."""
        return rgb.dtype == np.uint8 and self._edge_for(VIDEO_PREPROCESS if video else PREPROCESS,
                                                        rgb.shape[:2]) is not None

    def model_input(self, rgb: np.ndarray, video: bool = False):
        """RGB ``[H,W,3]`` (uint8, or float in [0,1]) -> ``image [1,3,S,S]``: on the backend where
        :meth:`on_backend` (backend-native), else on the host (the same resize in NumPy).

        sam2's image predictor's resize (antialiased bilinear); with ``video``, a uint8 frame
        as sam2's video loader resizes it (Pillow's bicubic, :func:`video_frame_to_model_input`;
        a float frame has no uint8 pixels to give Pillow, so it takes the image predictor's)."""
        video = video and rgb.dtype == np.uint8
        if self.on_backend(rgb, video):
            if video:
                return self.runners[VIDEO_PREPROCESS].infer(video_preprocess_feeds(rgb, self.size))["image"]
            return self.runners[PREPROCESS].infer(preprocess_feeds(rgb, self.size))["image"]
        if video:
            return video_frame_to_model_input(rgb, self.size)
        return image_to_model_input(rgb_to_float(rgb), self.size)

    def encode_image(self, rgb: np.ndarray, video: bool = False) -> Dict[str, Any]:
        """RGB ``[H,W,3]`` (uint8, or float in [0,1]) -> encoder outputs (backend-native);
        ``video``: see :meth:`model_input`."""
        return self.runners["image_encoder"].infer({"image": self.model_input(rgb, video)})

    def to_frame(self, low_res: np.ndarray, hw: Tuple[int, int], thr_logit: float, logits: bool = True
                 ) -> Tuple[List[np.ndarray], List[Optional[np.ndarray]]]:
        """N objects' chosen low-res logits ``[N,S/4,S/4]`` -> per object ``mask [H,W]`` bool
        (``logits > thr_logit``) and ``logits [H,W]`` float32 (None unless ``logits``) at the frame
        size ``hw`` (sam2's ``postprocess_masks``: plain bilinear).

        In the session's postprocess graph where it runs and admits ``hw`` (objects split into
        calls of its ``objects`` range; only the outputs asked for are copied back from the
        device), else on the host (OpenCV's bilinear, :func:`~runtime.sam2.inputs.logits_to_image`).
        """
        low_res = np.asarray(low_res, np.float32)
        r = self._edge_for(POSTPROCESS, hw)
        if r is None:
            full = [logits_to_image(m, hw) for m in low_res]
            return [f > thr_logit for f in full], (full if logits else [None] * len(full))
        step = r.spec.axis_ranges["objects"][2]
        masks: List[np.ndarray] = []
        values: List[Optional[np.ndarray]] = []
        for i in range(0, len(low_res), step):
            out = r.infer(postprocess_feeds(low_res[i:i + step], hw, thr_logit))
            masks += list(r.to_host(out["mask"]))
            values += list(r.to_host(out["logits"])) if logits else []
        return masks, (values if logits else [None] * len(masks))

    def vision_on_host(self, enc: Mapping[str, Any]) -> np.ndarray:
        """``vision_feat [1,256,S/16,S/16]`` as a host array."""
        return self.runners["image_encoder"].to_host(enc["vision_feat"])

    def no_memory_feat(self, enc: Mapping[str, Any]) -> np.ndarray:
        """Features of a frame with no memory: ``vision_feat + no_mem_embed`` (sam2's
        ``directly_add_no_mem_embed`` path)."""
        return self.vision_on_host(enc) + self.consts["no_mem_embed"].reshape(1, -1, 1, 1)

    def decode(self, image_embed, enc: Mapping[str, Any], coords: np.ndarray,
               labels: np.ndarray, mask_input: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
        """Prompt encoder + mask decoder for N objects of one frame (``enc``'s features):
        ``image_embed [N,256,h,w]``, ``coords [N,P,2]``, ``labels [N,P]``,
        ``mask_input [N,1,S/4,S/4]`` or None; every output as a host array with N rows."""
        n = len(coords)
        feeds = {
            "image_embed": image_embed,
            "feat_s1": enc["feat_s1"],
            "feat_s0": enc["feat_s0"],
            "point_coords": coords.astype(np.float32),
            "point_labels": labels.astype(np.float32),
            "mask_input": mask_input if mask_input is not None else np.repeat(self.no_mask, n, axis=0),
            "has_mask_input": np.array([1.0 if mask_input is not None else 0.0], np.float32),
        }
        r = self.runners["mask_decoder"]
        return {k: r.to_host(v) for k, v in r.infer(feeds).items()}

    def condition(self, enc: Mapping[str, Any], feeds: Mapping[str, Any]):
        """Memory attention: the frame's features conditioned on each object's memory
        (``feeds`` from :meth:`upload_memory`): ``[N,256,h,w]``, backend-native."""
        r = self.runners["memory_attention"]
        return r.infer(dict(feeds, vision_feat=enc["vision_feat"]))["conditioned_feat"]

    def upload_memory(self, memories: Sequence[Mapping[str, np.ndarray]]) -> Dict[str, Any]:
        """Objects' memory-attention inputs (host arrays, one mapping per object, see
        :func:`~runtime.sam2.memory.pack_objects`) -> one batched feed, backend-native,
        checked against the profiles (``mem_pos`` from the cache of :meth:`_uploaded_positions`)."""
        ranges = self.session.manifest.axis_ranges
        limit = ranges["objects"][2]
        if len(memories) > limit:
            raise ProfileLimitError(f"{len(memories)} objects in one call, but this model folder was built for "
                                    f"at most {limit} (objects); split them (objects_per_call)")
        for name, axis in (("mem_feats", "num_mem"), ("obj_ptrs", "num_ptr")):
            n = max(len(m[name]) for m in memories)
            lo, _, hi = ranges[axis]
            what = "memories" if axis == "num_mem" else "object pointers"
            if n > hi:
                raise ProfileLimitError(
                    f"{n} {what} to attend to, but this model folder was built for at most {hi} "
                    f"({axis}); prompt fewer frames or rebuild with larger profiles")
            if n < lo:
                raise ProfileLimitError(f"{n} {what} to attend to, but this model folder needs at least {lo} ({axis})")
        r = self.runners["memory_attention"]
        feeds = {n: r.upload(a) for n, a in pack_objects(memories).items()}
        feeds["mem_pos"] = self._uploaded_positions(memories)
        return feeds

    def _uploaded_positions(self, memories: Sequence[Mapping[str, Any]]) -> Any:
        """``mem_pos`` of ``memories``, backend-native, uploaded once per :func:`positions_key`:
        a tracked object's is the same every frame once its memory bank is full, so on a GPU
        only the memory features travel per frame (the most recent ones are kept, within
        :data:`POSITIONS_KEPT` and :data:`POSITIONS_MAX_BYTES`)."""
        key = positions_key(memories)
        if key not in self._positions:
            host = pack_positions(memories, self.pos_table)
            self._positions[key] = (self.runners["memory_attention"].upload(host), host.nbytes)
        self._positions.move_to_end(key)
        while len(self._positions) > 1 and (len(self._positions) > POSITIONS_KEPT or sum(
                n for _, n in self._positions.values()) > POSITIONS_MAX_BYTES):
            self._positions.popitem(last=False)
        return self._positions[key][0]

    def encode_memory(self, enc: Mapping[str, Any], high_res_logits: np.ndarray,
                      score: float) -> np.ndarray:
        """Memory encoder on ``[S,S]`` logits -> ``maskmem [64,S/16,S/16]``.

        Adds ``no_obj_embed_spatial`` where the object is absent (SAM2.1).
        """
        r = self.runners["memory_encoder"]
        out = r.infer({"vision_feat": enc["vision_feat"], "mask_logits": high_res_logits[None, None]})
        maskmem = r.to_host(out["maskmem_features"])[0]
        if "no_obj_embed_spatial" in self.consts and not score > 0:
            maskmem = maskmem + self.consts["no_obj_embed_spatial"][:, None, None]
        return maskmem.astype(np.float32)

    def memory_from_low_res(self, enc: Mapping[str, Any], out: FrameOutput,
                            binarize: bool) -> np.ndarray:
        """sam2's ``_encode_new_memory`` from a stored low-res mask: plain bilinear
        up to S, then binarised (masks from clicks, where the config says so) or
        not (sigmoid of the logits, in the graph)."""
        high = upsample_bilinear(out.low_res, (self.size, self.size))
        if binarize:
            high = np.where(high > 0, BINARIZED_LOGIT, -BINARIZED_LOGIT).astype(np.float32)
        return self.encode_memory(enc, high, out.object_score)

    # ------------------------------------------------------- host-side logic
    def select_single(self, dec: Mapping[str, np.ndarray], obj: int = 0) -> Tuple[np.ndarray, float, np.ndarray]:
        """``multimask_output=False``: (low-res logits, iou, obj_ptr) of object ``obj``, with the
        decoder's dynamic fallback to the best multimask output when unstable."""
        masks, ious = dec["masks"][obj], dec["iou_pred"][obj]
        i = 0
        if self.cfg["dynamic_multimask_via_stability"]:
            delta = self.cfg["dynamic_multimask_stability_delta"]
            single = masks[0]
            area_i = float(np.sum(single > delta))
            area_u = float(np.sum(single > -delta))
            stability = area_i / area_u if area_u > 0 else 1.0
            if stability < self.cfg["dynamic_multimask_stability_thresh"]:
                i = 1 + int(np.argmax(ious[1:]))
        return masks[i], float(ious[i]), dec["obj_ptr"][obj, 0]

    def select_multi(self, dec: Mapping[str, np.ndarray], obj: int = 0) -> Tuple[np.ndarray, float, np.ndarray]:
        """``multimask_output=True``: the best of object ``obj``'s masks 1..3 by predicted IoU."""
        ious = dec["iou_pred"][obj, 1:]
        i = 1 + int(np.argmax(ious))
        tok = i if self.cfg["use_multimask_token_for_obj_ptr"] else 0
        return dec["masks"][obj, i], float(dec["iou_pred"][obj, i]), dec["obj_ptr"][obj, tok]

    def gate(self, low_res: np.ndarray, obj_ptr: np.ndarray, score: float):
        """Object-score gating of mask and pointer (configs with the score head)."""
        if not self.cfg["pred_obj_scores"]:
            return low_res, obj_ptr
        appearing = score > 0
        if not appearing:
            low_res = np.full_like(low_res, NO_OBJ_SCORE)
        lam = (1.0 / (1.0 + np.exp(-score))) if self.cfg["soft_no_obj_ptr"] else float(appearing)
        if self.cfg["fixed_no_obj_ptr"]:
            obj_ptr = lam * obj_ptr
        obj_ptr = obj_ptr + (1 - lam) * self.consts["no_obj_ptr"]
        return low_res, obj_ptr.astype(np.float32)

    def heads(self, image_embed, enc: Mapping[str, Any], coords: np.ndarray, labels: np.ndarray,
              mask_input: Optional[np.ndarray], multimask: bool) -> FrameOutput:
        """sam2's ``_forward_sam_heads`` for one object: decode, select, gate."""
        return self.heads_all(image_embed, enc, coords, labels, mask_input, multimask)[0]

    def heads_all(self, image_embed, enc: Mapping[str, Any], coords: np.ndarray, labels: np.ndarray,
                  mask_input: Optional[np.ndarray], multimask: bool) -> List[FrameOutput]:
        """sam2's ``_forward_sam_heads`` for N objects in one decoder call (see :meth:`decode`)."""
        dec = self.decode(image_embed, enc, coords, labels, mask_input)
        select = self.select_multi if multimask else self.select_single
        outs = []
        for i in range(len(dec["masks"])):
            low, iou, ptr = select(dec, i)
            score = float(dec["object_score_logits"][i, 0])
            low, ptr = self.gate(low, ptr, score)
            outs.append(FrameOutput(low.astype(np.float32), ptr.astype(np.float32), score, iou))
        return outs

    def mask_as_output(self, enc: Mapping[str, Any], hard: np.ndarray) -> FrameOutput:
        """sam2's ``_use_mask_as_output`` for a 0/1 mask ``[S,S]`` at model size.

        The mask itself becomes the output (``mask*20-10``, antialiased down to
        S/4); the decoder runs only for the object pointer, with the mask as
        its dense prompt. The object is present iff the mask is non-empty.
        """
        high = hard * np.float32(MASK_OUT_SCALE) + np.float32(MASK_OUT_BIAS)
        low = resize_bilinear(high, (self.size // 4, self.size // 4), antialias=True)
        dense = mask_downsample(hard, self.consts["mask_downsample_weight"],
                                self.consts["mask_downsample_bias"])
        dec = self.decode(enc["vision_feat"], enc, *self.no_points, dense)
        _, _, ptr = self.select_single(dec)
        present = bool(hard.any())
        score = MASK_OUT_SCALE * float(present) + MASK_OUT_BIAS
        if self.cfg["pred_obj_scores"]:
            lam = float(present)
            if self.cfg["fixed_no_obj_ptr"]:
                ptr = lam * ptr
            ptr = ptr + (1 - lam) * self.consts["no_obj_ptr"]
        return FrameOutput(low.astype(np.float32), ptr.astype(np.float32), score, 1.0)

    def prompt(self, points, labels, box, hw: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
        """User prompts in image pixels -> ``[1,P,2]`` model pixels and ``[1,P]`` labels.

        A box becomes two corner points (labels 2, 3) placed before the clicks,
        as sam2's predictors do.
        """
        coords, labs = [], []
        if box is not None:
            b = np.asarray(box, np.float32).reshape(-1)
            if not np.isfinite(b).all():
                raise InputError(f"box coordinates must be finite numbers, got {np.asarray(box).tolist()}")
            if b.size != 4 or not (b[2] > b[0] and b[3] > b[1]):
                raise InputError(f"box must be (x0, y0, x1, y1) with x1 > x0 and y1 > y0, got {box}")
            coords += [b[:2], b[2:]]
            labs += [2, 3]
        if points is not None:
            p = np.asarray(points, np.float32)
            if p.ndim != 2 or p.shape[1] != 2 or len(p) == 0:
                raise InputError(f"points must be a list of (x, y), got shape {p.shape}")
            if not np.isfinite(p).all():
                raise InputError(f"point coordinates must be finite numbers, got {p.tolist()}")
            lab = np.ones(len(p)) if labels is None else np.asarray(labels)
            if lab.shape != (len(p),):
                raise InputError(f"{len(p)} points but {lab.size} labels; give one label per point")
            if not np.isin(lab, (0, 1)).all():
                raise InputError("point labels must be 1 (foreground) or 0 (background)")
            coords += list(p)
            labs += list(lab)
        elif labels is not None:
            raise InputError("labels given without points")
        if not coords:
            raise InputError("no prompt: give points (with labels) or a box")
        c = np.asarray(coords, np.float32)
        h, w = hw
        if (c < 0).any() or (c[:, 0] > w).any() or (c[:, 1] > h).any():
            raise InputError(f"prompt coordinates outside the {w}x{h} image: {c.tolist()}")
        max_points = self.axis_max("num_points")
        if len(c) > max_points:
            raise ProfileLimitError(f"{len(c)} prompt points, but this model folder takes at most {max_points} "
                                    "(num_points); give fewer points")
        c = c * np.array([self.size / w, self.size / h], np.float32)
        return c[None], np.asarray(labs, np.float32)[None]
