"""SAM2 video object tracking on a model folder, as sam2's ``SAM2VideoPredictor``.

Prompt one or more objects (points, box or mask) on one or more frames, then
``propagate`` forward through the video. Each object keeps sam2's memory: its
prompted frames for the whole video, plus a sliding window of recent frames
(the last ``num_maskmem-1`` spatial memories and ``max_obj_ptrs_in_encoder-1``
object pointers), so the state never grows with the length of the video.
Memory features are stored rounded to bfloat16, as sam2's predictor stores
them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, Hashable, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from runtime.sam2.memory import plan_calls, pointer_pos_enc, select_tracking_memory, tracking_window
from runtime.core.session import EngineSession, Product, serialized
from runtime.errors import InputError, ProfileLimitError
from runtime.core.images import image_to_rgb, threshold_logit
from runtime.sam2.inputs import mask_to_model_size
from runtime.sam2.spec import POSTPROCESS, VIDEO_PREPROCESS
from runtime.sam2.stages import FrameOutput, Sam2Stages, objects_per_call_for

LOGIT_CLAMP = 32.0  # sam2 clamps earlier logits before feeding them back as a mask prompt


def round_to_bfloat16(x: np.ndarray) -> np.ndarray:
    """float32 -> nearest bfloat16 value (round half to even), kept as float32."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & np.uint32(0xFFFF0000)
    return bits.view(np.float32)


@dataclass
class ObjectMask:
    """One object on one frame: ``mask [H,W]`` bool, ``logits [H,W]`` (None where the tracker was
    told not to return them), ``object_score`` (a logit: > 0 means the object is present)."""

    mask: np.ndarray
    logits: Optional[np.ndarray]
    object_score: float


@dataclass
class TrackedFrame:
    """All objects on one frame, keyed by object id."""

    frame_idx: int
    objects: Dict[Hashable, ObjectMask]

    def __getitem__(self, obj_id: Hashable) -> ObjectMask:
        return self.objects[obj_id]


@dataclass
class _ObjectState:
    """One object's memory bank: prompted frames, and recent tracked frames (bounded)."""

    prompted: Dict[int, FrameOutput] = field(default_factory=dict)
    points: Dict[int, Tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    recent: "OrderedDict[int, FrameOutput]" = field(default_factory=OrderedDict)

    def output(self, frame_idx: int) -> FrameOutput:
        return self.prompted[frame_idx] if frame_idx in self.prompted else self.recent[frame_idx]


class VideoTracker(Product):
    """Track objects through a video (or a live stream) from prompts on some frames.

    >>> trk = VideoTracker.load("engines/tiny-2.1-1024-fp16-stock")
    >>> trk.add_prompt(0, obj_id=1, image=frames[0], points=[(x, y)], labels=[1])
    >>> trk.add_prompt(0, obj_id=2, image=frames[0], box=(x0, y0, x1, y1))
    >>> for out in trk.propagate(frames):       # out.frame_idx, out[1].mask, out[2].mask
    ...     ...

    ``num_frames`` is the video length when known (sam2 scales pointer
    position encodings by it); ``None`` for a live stream.
    uint8 frames are resized as sam2's video loader resizes the JPEG frames of
    a video folder (Pillow's bicubic, stretched to the square: the folder's
    video preprocess graph, or :func:`~runtime.sam2.inputs.video_frame_to_model_input`
    on the host), so masks match ``SAM2VideoPredictor`` on the same frames;
    float frames take the image predictor's antialiased bilinear resize.
    ``binarize_prompt_masks``: prompted frames enter memory as hard masks, as
    sam2's ``build_sam2_video_predictor`` configures (whatever the export's
    config says).
    ``objects_per_call``: objects tracked together in one memory-attention and
    one decoder call per frame (default: the folder's ``objects`` maximum on
    TensorRT and GPU providers; 1, one by one as sam2 does, on ONNX Runtime's
    CPU provider, where that measured faster). Objects with the same memory and pointer counts
    share calls; ``pad_objects=True`` puts the others in too (padded, the
    padding masked out). Each object still attends only to its own memory bank.
    ``return_logits``: whether each :class:`ObjectMask` carries the frame-size
    logits too (``False``: None, and only masks come back from the device).
    """

    EDGES = (VIDEO_PREPROCESS, POSTPROCESS)

    def __init__(self, session: EngineSession, threshold: float = 0.5,
                 binarize_prompt_masks: bool = True, objects_per_call: Optional[int] = None,
                 pad_objects: bool = False, return_logits: bool = True):
        super().__init__(session)
        self.stages = Sam2Stages(session)
        self.return_logits = bool(return_logits)
        self.objects_per_call = objects_per_call_for(self.stages, objects_per_call)
        self.pad_objects = bool(pad_objects)
        self.threshold = threshold
        self._thr_logit = threshold_logit(threshold)
        self.binarize_prompt_masks = binarize_prompt_masks
        self.reset()

    def _release(self) -> None:
        self.reset()

    @serialized
    def reset(self) -> None:
        """Forget every object, prompt and memory (start a new video)."""
        self._objects: "OrderedDict[Hashable, _ObjectState]" = OrderedDict()
        self._prompt_feats: Dict[int, Dict[str, np.ndarray]] = {}  # encoder outputs, host
        self._hw: Optional[Tuple[int, int]] = None
        self._started = False

    @property
    def object_ids(self) -> List[Hashable]:
        return list(self._objects)

    def stored_frames(self) -> int:
        """Frame outputs held in memory over all objects (bounded; for checks)."""
        return sum(len(o.prompted) + len(o.recent) for o in self._objects.values())

    @serialized
    def remove_object(self, obj_id: Hashable) -> None:
        """Stop tracking ``obj_id``."""
        self._check_known(obj_id)
        del self._objects[obj_id]

    # ---------------------------------------------------------------- prompts
    @serialized
    def add_prompt(self, frame_idx: int, obj_id: Hashable, image: np.ndarray, *, points=None,
                   labels=None, box=None, mask: Optional[np.ndarray] = None,
                   clear_old: bool = True) -> ObjectMask:
        """Prompt ``obj_id`` on frame ``frame_idx`` (whose pixels are ``image``, ``[H,W,3]`` RGB).

        Points/box or a mask (``[H,W]``, empty = object absent). Prompting the
        same frame again refines: the earlier logits become the mask prompt,
        and with ``clear_old=False`` the earlier clicks are kept. Returns the
        object's mask on that frame.
        """
        if self._started:
            raise InputError("prompts after propagate() are not supported: call reset() and "
                             "prompt again (corrections during tracking are not implemented)")
        if not isinstance(frame_idx, (int, np.integer)) or frame_idx < 0:
            raise InputError(f"frame_idx must be a non-negative int, got {frame_idx!r}")
        if mask is not None and (points is not None or box is not None):
            raise InputError("give a mask or points/box for a prompt, not both")
        if mask is None and points is None and box is None:
            raise InputError("add_prompt needs points (with labels), a box or a mask")
        if box is not None and not clear_old:
            raise InputError("a box must come first: add it with clear_old=True, then the clicks")
        rgb = image_to_rgb(image, "frame")
        self._check_size(rgb.shape[:2])
        st = self.stages
        frame_idx = int(frame_idx)
        known = self._objects.get(obj_id)
        if known is None or frame_idx not in known.prompted:
            self._check_prompt_frames(obj_id, 1 + (len(known.prompted) if known else 0))
        if mask is not None:
            hard = self._mask_prompt(mask, rgb.shape[:2])
        else:
            coords, labs = st.prompt(points, labels, box, rgb.shape[:2])
        feats = self._prompt_feats.get(frame_idx)
        if feats is None:
            r = st.runners["image_encoder"]
            feats = {k: r.to_host(v).copy() for k, v in st.encode_image(rgb, video=True).items()}
            self._prompt_feats[frame_idx] = feats
        obj = self._objects.setdefault(obj_id, _ObjectState())
        if mask is not None:
            out = st.mask_as_output(feats, hard)
            obj.points.pop(frame_idx, None)
        else:
            old = obj.points.get(frame_idx)
            if old is not None and not clear_old:
                coords = np.concatenate([old[0], coords], axis=1)
                labs = np.concatenate([old[1], labs], axis=1)
            obj.points[frame_idx] = (coords, labs)
            prev = obj.prompted.get(frame_idx)
            mask_input = None if prev is None else \
                np.clip(prev.low_res, -LOGIT_CLAMP, LOGIT_CLAMP)[None, None]
            n_pts = labs.shape[1]
            multimask = (st.cfg["multimask_output_in_sam"]
                         and st.cfg["multimask_min_pt_num"] <= n_pts <= st.cfg["multimask_max_pt_num"])
            out = st.heads(st.no_memory_feat(feats), feats, coords, labs, mask_input, multimask)
        obj.prompted[frame_idx] = out
        return self._object_masks([out])[0]

    def prompt_frame_limit(self) -> int:
        """How many frames per object may carry prompts: every one is attended to on every tracked
        frame, beside ``num_maskmem - 1`` recent memories and ``max_obj_ptrs - 1`` pointers, and the
        memory-attention engines were built for a fixed number (``export.build --max-prompt-frames``)."""
        cfg = self.stages.cfg
        limits = [self.session.axis_max("num_mem") - (cfg["num_maskmem"] - 1)]
        if cfg["use_obj_ptrs_in_encoder"]:
            limits.append(self.session.axis_max("num_ptr") - (cfg["max_obj_ptrs_in_encoder"] - 1))
        return max(1, min(limits))

    def _check_prompt_frames(self, obj_id: Hashable, n: int) -> None:
        max_cond = self.stages.cfg.get("max_cond_frames_in_attn", -1)
        attended = n if max_cond is None or max_cond < 1 else min(n, max_cond)
        limit = self.prompt_frame_limit()
        if attended > limit:
            raise ProfileLimitError(
                f"object {obj_id!r} would have prompts on {n} frames, but this model folder's memory-attention "
                f"engines take at most {limit} prompted frames per object (num_mem <= "
                f"{self.session.axis_max('num_mem')}); prompt fewer frames, or rebuild with "
                f"`python -m export.build --stock-sam2 --max-prompt-frames {n}`")

    def _mask_prompt(self, mask: np.ndarray, hw: Tuple[int, int]) -> np.ndarray:
        """User mask ``[H,W]`` -> 0/1 ``[S,S]`` as sam2's ``add_new_mask`` (antialiased, ``>= 0.5``)."""
        m = np.asarray(mask)
        if m.ndim == 3 and m.shape[2] == 1:
            m = m[:, :, 0]
        if m.shape != tuple(hw):
            raise InputError(f"mask is {m.shape} but the frame is {hw[0]}x{hw[1]}; give an H x W mask")
        m = (m > 0).astype(np.float32)
        size = self.stages.size
        if m.shape == (size, size):
            return m
        return (mask_to_model_size(m, size) >= 0.5).astype(np.float32)

    # ------------------------------------------------------------- propagate
    def propagate(self, frames: Iterable[np.ndarray], num_frames: Optional[int] = None,
                  start_frame: int = 0) -> Iterator[TrackedFrame]:
        """Track every object forward through ``frames`` (frame ``start_frame`` first).

        Yields one :class:`TrackedFrame` per frame from the earliest prompted
        frame on (earlier frames are skipped, as in sam2). ``num_frames``
        defaults to ``len(frames)`` when ``frames`` has a length.
        """
        if not self._objects:
            raise InputError("no object to track: call add_prompt() first")
        if num_frames is None and hasattr(frames, "__len__"):
            num_frames = start_frame + len(frames)
        self._start()
        first = min(t for o in self._objects.values() for t in o.prompted)
        for frame_idx, image in enumerate(frames, start=start_frame):
            if frame_idx < first:
                continue
            yield self.track_frame(frame_idx, image, num_frames)

    @serialized
    def track_frame(self, frame_idx: int, image: np.ndarray, num_frames: Optional[int] = None) -> TrackedFrame:
        """One step of forward tracking on ``image`` (``[H,W,3]`` uint8 RGB, or float RGB in [0, 1]),
        for callers that feed frames one by one (``propagate`` calls this). Frames must come in order."""
        if not self._objects:
            raise InputError("no object to track: call add_prompt() first")
        rgb = image_to_rgb(image, f"frame {frame_idx}")
        self._start()
        self._check_size(rgb.shape[:2], frame_idx)
        tracked = {i: o for i, o in self._objects.items() if frame_idx not in o.prompted}
        outs = {}
        if tracked:  # else every object is prompted on this frame: no encoder run
            outs = dict(zip(tracked, self._track_objects(list(tracked.values()), frame_idx, rgb, num_frames)))
        ids = list(self._objects)
        return TrackedFrame(frame_idx, dict(zip(ids, self._object_masks(
            [outs[i] if i in outs else self._objects[i].prompted[frame_idx] for i in ids]))))

    def _track_objects(self, objs: List[_ObjectState], frame_idx: int, rgb: np.ndarray,
                       num_frames: Optional[int]) -> List[FrameOutput]:
        """One tracking step of ``objs`` on ``rgb``: the image encoder once, memory attention and
        the decoder once per call of :func:`~runtime.sam2.memory.plan_calls`, the memory
        encoder once per object."""
        st = self.stages
        memories = [self._object_memory(o, frame_idx, num_frames) for o in objs]
        enc = st.encode_image(rgb, video=True)
        multimask = self._multimask_when_tracking()
        outs: List[Optional[FrameOutput]] = [None] * len(objs)
        for call in plan_calls(memories, self.objects_per_call, self.pad_objects):
            cond = st.condition(enc, st.upload_memory([memories[i] for i in call]))
            for i, out in zip(call, st.heads_all(cond, enc, *st.no_points_for(len(call)), None, multimask)):
                outs[i] = out
        for obj, out in zip(objs, outs):
            out.maskmem = round_to_bfloat16(st.memory_from_low_res(enc, out, binarize=False))
            obj.recent[frame_idx] = out
            self._forget_old(obj, frame_idx)
        return outs

    def _object_memory(self, obj: _ObjectState, frame_idx: int, num_frames: Optional[int]) -> Dict[str, list]:
        """What ``obj`` attends to on ``frame_idx`` (host arrays, see :func:`~runtime.sam2.memory.pack_objects`)."""
        cfg, consts = self.stages.cfg, self.stages.consts
        mems, ptrs = select_tracking_memory(frame_idx, list(obj.prompted), obj.recent, cfg, num_frames)
        t_max = num_frames if num_frames is not None else cfg["max_obj_ptrs_in_encoder"]
        if cfg["use_obj_ptrs_in_encoder"] and not ptrs:
            raise InputError(
                f"frame {frame_idx} comes before an object's first prompt (frame "
                f"{min(obj.prompted)}): sam2 cannot track an object before it is prompted; "
                "prompt every object on the first frame to track")
        return {
            "mem_feats": [obj.output(t).maskmem for t, _ in mems],
            "mem_tpos": [i for _, i in mems],
            "obj_ptrs": [obj.output(t).obj_ptr for t, _ in ptrs],
            "obj_ptr_pos": pointer_pos_enc([d for _, d in ptrs], t_max, cfg, consts).reshape(-1, cfg["mem_dim"]),
        }

    def _multimask_when_tracking(self) -> bool:
        """sam2's ``_use_multimask`` on a tracked frame (no clicks: 0 points)."""
        cfg = self.stages.cfg
        return (cfg["multimask_output_in_sam"] and cfg["multimask_output_for_tracking"]
                and cfg["multimask_min_pt_num"] <= 0 <= cfg["multimask_max_pt_num"])

    def _forget_old(self, obj: _ObjectState, frame_idx: int) -> None:
        """Drop tracked frames no later frame can attend to (keeps the bank bounded)."""
        oldest = frame_idx - tracking_window(self.stages.cfg)
        while obj.recent and next(iter(obj.recent)) < oldest:
            obj.recent.popitem(last=False)

    def _start(self) -> None:
        """sam2's ``propagate_in_video_preflight``: memory of every prompted frame,
        from its (binarised) low-res mask, once the prompts are final."""
        if self._started:
            return
        st = self.stages
        for obj in self._objects.values():
            for frame_idx, out in obj.prompted.items():
                if out.maskmem is None:
                    mem = st.memory_from_low_res(self._prompt_feats[frame_idx], out,
                                                  binarize=self.binarize_prompt_masks)
                    out.maskmem = round_to_bfloat16(mem)
        self._started = True

    # --------------------------------------------------------------- helpers
    def _object_masks(self, outs: List[FrameOutput]) -> List[ObjectMask]:
        """Frame-size masks of ``outs`` (one postprocess call for all: :meth:`Sam2Stages.to_frame`)."""
        masks, logits = self.stages.to_frame(np.stack([o.low_res for o in outs]), self._hw, self._thr_logit,
                                             self.return_logits)
        return [ObjectMask(m, lg, o.object_score) for m, lg, o in zip(masks, logits, outs)]

    def _check_size(self, hw: Tuple[int, int], frame_idx: Optional[int] = None) -> None:
        if self._hw is None:
            self._hw = tuple(hw)
        elif tuple(hw) != self._hw:
            where = "" if frame_idx is None else f"frame {frame_idx} "
            raise InputError(
                f"{where}is {hw[1]}x{hw[0]} but this video's frames are {self._hw[1]}x{self._hw[0]}; "
                "every frame must have the same size (call reset() for a new video)")

    def _check_known(self, obj_id: Hashable) -> None:
        if obj_id not in self._objects:
            known = ", ".join(map(repr, self._objects)) or "none"
            raise InputError(f"unknown object id {obj_id!r}; tracked objects: {known}")
