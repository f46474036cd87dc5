"""The few-shot pipeline: chains the four stage runners (docs/inference-contract.md).

``add_reference`` runs the image encoder, the mask decoder (object pointer)
and the memory encoder once per reference and caches the results;
``segment`` runs the image encoder once per frame, then memory attention and
the mask decoder against the cached memories, per concept or for several
concepts in one call (``objects_per_call``). Written once
against :class:`runtime.core.backends.base.StageRunner`, so it is the same code
for ONNX Runtime and TensorRT.
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

import numpy as np

from runtime.core.session import EngineSession, Product, serialized
from runtime.sam2.memory import plan_calls, pointer_pos_enc, select_memories, select_pointers
from runtime.errors import InputError
from runtime.core.images import image_to_rgb, threshold_logit
from runtime.sam2.inputs import check_mask, mask_to_model_size, scribble_to_points
from runtime.sam2.results import ConceptResult, SegmentationResult
from runtime.sam2.spec import POSTPROCESS, PREPROCESS
from runtime.sam2.stages import FrameOutput, Sam2Stages, objects_per_call_for


class FewShotSegmenter(Product):
    """k references (image + mask, clicks, box or scribble) per concept -> masks in new images.

    >>> seg = FewShotSegmenter.load("engines/tiny-2.1-1024-fp16", backend="onnxruntime")
    >>> seg.add_reference(image, mask, concept="dog")
    >>> res = seg.segment(frame)            # res["dog"].mask, .logits, .iou

    ``threshold``: the probability above which a pixel is in the mask.
    ``return_logits``: whether results carry the frame-size logits too
    (``False``: ``logits`` is None, and where the postprocess graph runs on a
    device only the masks are copied back).
    ``objects_per_call``: concepts segmented together in one memory-attention
    and one decoder call (default: as many as the folder was built for, its
    ``objects`` axis, on TensorRT and GPU providers; 1, one by one, on ONNX
    Runtime's CPU provider, where that measured faster). Concepts with the same number of
    references share calls; ``pad_objects=True`` puts concepts with different
    numbers into the same call too (the shorter memories padded and the
    padding masked out, which costs the padded attention work). Every concept
    gets the mask it would get alone.

    Threads: every method may be called from several threads. ``segment``
    calls run concurrently (on ONNX Runtime; TensorRT serialises them); each
    one segments the concepts as they were when it started its memory
    attention. ``add_reference`` and ``clear`` change the references
    atomically; to change several as one step (``clear`` then
    ``add_reference``, with no ``segment`` seeing the state in between), do
    it inside ``with seg.updating():``.
    """

    EDGES = (PREPROCESS, POSTPROCESS)

    def __init__(self, session: EngineSession, threshold: float = 0.5,
                 objects_per_call: Optional[int] = None, pad_objects: bool = False, return_logits: bool = True):
        super().__init__(session)
        self.stages = Sam2Stages(session)
        self.size = self.stages.size
        self.threshold = threshold
        self._thr_logit = threshold_logit(threshold)
        self.return_logits = bool(return_logits)
        self.objects_per_call = objects_per_call_for(self.stages, objects_per_call)
        self.pad_objects = bool(pad_objects)
        self._refs: "OrderedDict[str, List[FrameOutput]]" = OrderedDict()
        # (concepts in order, [(concepts of one call, its feeds, backend-native)]); None after a change
        self._batches: Optional[Tuple[List[str], List[Tuple[List[str], Dict[str, Any]]]]] = None
        self._lock = threading.RLock()  # guards _refs and _batches

    def _release(self) -> None:
        with self._lock:
            self._refs.clear()
            self._batches = None

    @property
    def concepts(self) -> List[str]:
        with self._lock:
            return list(self._refs)

    def num_references(self, concept: str) -> int:
        with self._lock:
            return len(self._refs.get(concept, []))

    @contextlib.contextmanager
    def updating(self) -> Iterator["FewShotSegmenter"]:
        """Change references as one step: ``segment`` in other threads waits until the block ends."""
        with self._lock:
            yield self

    @serialized
    def clear(self, concept: Optional[str] = None) -> None:
        """Forget all references (or one concept's)."""
        with self._lock:
            if concept is None:
                self._refs.clear()
            else:
                self._refs.pop(concept, None)
            self._batches = None

    # ------------------------------------------------------------- references
    @serialized
    def add_reference(self, image: np.ndarray, mask: Optional[np.ndarray] = None, *,
                      points=None, labels=None, box=None, scribble: Optional[np.ndarray] = None,
                      concept: str = "default") -> None:
        """Encode one reference of ``concept`` (image ``[H,W,3]`` uint8 RGB).

        The object is given by exactly one of: ``mask`` (``[H,W]`` bool), clicks
        ``points`` (``[(x, y), ...]``, ``labels`` 1 foreground / 0 background,
        default all 1), a ``box`` ``(x0, y0, x1, y1)`` (clicks may refine it),
        or a ``scribble`` (``[H,W]`` bool stroke: its pixels become positive
        clicks, as SANSA does; more pixels than the decoder's profile admits
        are subsampled evenly, with a warning). Its memory is computed once
        and cached.
        """
        if not isinstance(concept, str) or not concept:
            raise InputError("concept must be a non-empty string")
        given = [n for n, v in (("mask", mask), ("points/box", points if box is None else box),
                                ("scribble", scribble)) if v is not None]
        if not given:
            raise InputError("add_reference needs a mask, points/box or a scribble")
        if len(given) > 1:
            raise InputError(f"give one of mask, points/box or scribble for a reference, not {' and '.join(given)}")
        if labels is not None and points is None:
            raise InputError("labels given without points")
        rgb = image_to_rgb(image, "reference image")
        st = self.stages
        if mask is not None:
            m = check_mask(mask, rgb.shape[:2])
            enc = st.encode_image(rgb)
            ref = st.mask_as_output(enc, (mask_to_model_size(m, self.size) > 0).astype(np.float32))
            ref.maskmem = st.memory_from_low_res(enc, ref, binarize=False)
        else:
            if scribble is not None:
                limit = st.axis_max("num_points")
                points, n = scribble_to_points(scribble, rgb.shape[:2], limit)
                labels = np.ones(len(points))
                if n > limit:
                    warnings.warn(
                        f"scribble of concept {concept!r} has {n} stroke pixels; this model folder takes at "
                        f"most {limit} prompt points, so {len(points)} evenly spaced ones are used "
                        "(SANSA uses every pixel); rebuild with a larger num_points profile to use more",
                        UserWarning, stacklevel=2)
            coords, labs = st.prompt(points, labels, box, rgb.shape[:2])
            enc = st.encode_image(rgb)
            ref = st.heads(st.no_memory_feat(enc), enc, coords, labs, None, multimask=False)
            ref.maskmem = st.memory_from_low_res(
                enc, ref, binarize=st.cfg["binarize_mask_from_pts_for_mem_enc"])
        with self._lock:
            self._refs.setdefault(concept, []).append(ref)
            self._batches = None
            k = len(self._refs[concept])
        n_mem = int(st.cfg["num_maskmem"])
        if k == n_mem + 1:
            warnings.warn(
                f"concept {concept!r} now has {k} references, but SAM2's memory attends to {n_mem} "
                f"frames: the first reference and the {n_mem - 1} latest; the others only add "
                "their object pointer (SANSA behaves the same; docs/inference-contract.md)",
                UserWarning, stacklevel=2)

    def _concept_memory(self, concept: str) -> Dict[str, list]:
        """A concept's memory-attention entries (host arrays, see :func:`~runtime.sam2.memory.pack_objects`;
        call under the lock)."""
        refs = self._refs[concept]
        k = len(refs)
        cfg, consts = self.stages.cfg, self.stages.consts
        mems = select_memories(k, cfg["num_maskmem"])
        ptrs = select_pointers(k, cfg["max_obj_ptrs_in_encoder"])
        return {
            "mem_feats": [refs[j].maskmem for j, _ in mems],
            "mem_tpos": [t for _, t in mems],
            "obj_ptrs": [refs[j].obj_ptr for j, _ in ptrs],
            "obj_ptr_pos": pointer_pos_enc([d for _, d in ptrs], k + 1, cfg, consts),
        }

    def _snapshot(self, what: str = "segment()") -> Tuple[List[str], List[Tuple[List[str], Dict[str, Any]]]]:
        """``(concepts, [(concepts of a call, their batched memory-attention feeds)])`` as they are
        now, one entry per call (:func:`~runtime.sam2.memory.plan_calls`), uploaded once per
        change of the references (consistent under concurrent edits)."""
        with self._lock:
            if not self._refs:
                raise InputError(f"{what} before any reference: call add_reference() first")
            if self._batches is None:
                names = list(self._refs)
                memories = [self._concept_memory(c) for c in names]
                calls = plan_calls(memories, self.objects_per_call, self.pad_objects)
                self._batches = (names, [([names[i] for i in g],
                                           self.stages.upload_memory([memories[i] for i in g]))
                                          for g in calls])
            return self._batches

    # ----------------------------------------------------------------- target
    @serialized
    def segment(self, image: np.ndarray) -> SegmentationResult:
        """Masks of every concept in ``image`` (``[H,W,3]`` uint8 RGB)."""
        self._snapshot()  # the error before the encoder runs, not after
        t0 = time.perf_counter()
        return self._finish(t0, *self._encode(image))

    def segment_stream(self, frames: Iterable[np.ndarray], pipelined: bool = True
                       ) -> Iterator[SegmentationResult]:
        """:meth:`segment` for each of ``frames``, in order, with the same results.

        ``pipelined``: the image encoder of the next frame runs in a worker
        thread while this frame's memory attention and mask decoder run (ONNX
        Runtime releases the GIL while it computes), so a frame's latency
        stays that of :meth:`segment` but the stream gains the overlap. Only
        with the onnxruntime backend, whose stage outputs are fresh host
        arrays; TensorRT runners reuse their output buffers and run in order.
        A frame's ``timings["total"]`` is then its wall time since the
        previous result, the figure frames/s is made of.
        """
        self._snapshot("segment_stream()")
        if not pipelined or self.backend != "onnxruntime":
            for frame in frames:
                yield self.segment(frame)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder") as pool:
            it = iter(frames)
            first = next(it, None)
            if first is None:
                return
            pending = pool.submit(self._encode, first)
            t_prev = time.perf_counter()
            for frame in it:
                encoded = pending.result()
                pending = pool.submit(self._encode, frame)
                res = self._finish(t_prev, *encoded)
                t_prev = time.perf_counter()
                yield res
            yield self._finish(t_prev, *pending.result())

    def _encode(self, image: np.ndarray):
        """Pre-processing (on the backend where it can: :meth:`Sam2Stages.model_input`) and the
        image encoder: ``(rgb [H,W,3], encoder outputs, timings)``."""
        t0 = time.perf_counter()
        rgb = image_to_rgb(image, "image")
        x = self.stages.model_input(rgb)
        t1 = time.perf_counter()
        enc = self.stages.runners["image_encoder"].infer({"image": x})
        t2 = time.perf_counter()
        return rgb, enc, {"preprocess": t1 - t0, "image_encoder": t2 - t1}

    def _finish(self, t0: float, rgb: np.ndarray, enc: Mapping[str, Any],
                enc_timings: Mapping[str, float]) -> SegmentationResult:
        """Memory attention, mask decoder and post-processing of every concept on encoded ``rgb``."""
        timings = {**enc_timings, "memory_attention": 0.0, "mask_decoder": 0.0, "postprocess": 0.0}
        results = {}
        st = self.stages
        names, calls = self._snapshot()
        for concepts, feeds in calls:
            ta = time.perf_counter()
            cond = st.condition(enc, feeds)
            tb = time.perf_counter()
            dec = st.decode(cond, enc, *st.no_points_for(len(concepts)), None)
            tc = time.perf_counter()
            lows, ious = [], []
            for i in range(len(concepts)):
                low, iou, ptr = st.select_multi(dec, i)
                lows.append(st.gate(low, ptr, float(dec["object_score_logits"][i, 0]))[0])
                ious.append(iou)
            masks, logits = st.to_frame(np.stack(lows), rgb.shape[:2], self._thr_logit, self.return_logits)
            for concept, mask, lg, iou in zip(concepts, masks, logits, ious):
                results[concept] = ConceptResult(mask=mask, logits=lg, iou=iou)
            td = time.perf_counter()
            timings["memory_attention"] += tb - ta
            timings["mask_decoder"] += tc - tb
            timings["postprocess"] += td - tc
        timings["total"] = time.perf_counter() - t0
        return SegmentationResult({c: results[c] for c in names}, timings)
