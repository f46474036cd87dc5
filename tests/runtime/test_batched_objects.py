"""Concepts (few-shot) and objects (tracking) on the batch axis of memory attention and the decoder.

A batched call pads objects with fewer memories and masks the padding out, so
each object must get what a call of its own gives it: logits within float
rounding, masks with IoU >= 0.999 (fp32). The comparison with sam2's own
video predictor with batched objects is in test_sam2_predictors.py.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from runtime.errors import ModelFolderError, ProfileLimitError, UsageError
from runtime.sam2.fewshot import FewShotSegmenter
from runtime.sam2.memory import pack_objects, pack_positions
from runtime.sam2.tracker import VideoTracker

IOU_MIN = 0.999
LOGITS_MAX_ABS = 1e-4


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _memory(rng, n_mem: int, n_ptr: int, side: int = 4):
    return {"mem_feats": rng.standard_normal((n_mem, 64, side, side)).astype(np.float32),
            "mem_tpos": list(rng.permutation(7)[:n_mem]),
            "obj_ptrs": rng.standard_normal((n_ptr, 256)).astype(np.float32),
            "obj_ptr_pos": rng.standard_normal((n_ptr, 64)).astype(np.float32)}


def _table(rng, side: int = 4):
    """A stand-in for memory_pos_table: one random encoding per maskmem_tpos_enc index."""
    return rng.standard_normal((7, 64, side, side)).astype(np.float32)


def _packed(memories, table):
    return {**pack_objects(memories), "mem_pos": pack_positions(memories, table)}


def test_pack_objects_pads_and_marks_the_padding():
    rng = np.random.default_rng(0)
    a, b = _memory(rng, 1, 3), _memory(rng, 4, 2)
    table = _table(rng)
    packed = _packed([a, b], table)
    assert packed["mem_feats"].shape == (2, 4, 64, 4, 4) and packed["obj_ptrs"].shape == (2, 3, 256)
    assert packed["mem_pos"].shape == (2, 4, 64, 4, 4)
    np.testing.assert_array_equal(packed["mem_valid"], [[1, 0, 0, 0], [1, 1, 1, 1]])
    np.testing.assert_array_equal(packed["ptr_valid"], [[1, 1, 1], [1, 1, 0]])
    np.testing.assert_array_equal(packed["mem_feats"][0, 0], a["mem_feats"][0])
    for j, t in enumerate(b["mem_tpos"]):
        np.testing.assert_array_equal(packed["mem_pos"][1, j], table[t])
    np.testing.assert_array_equal(packed["obj_ptr_pos"][1, :2], b["obj_ptr_pos"])
    assert not packed["mem_feats"][0, 1:].any() and not packed["obj_ptrs"][1, 2:].any()
    assert not packed["mem_pos"][0, 1:].any()


def test_memory_pos_table_is_sams_sum_of_spatial_and_temporal_encodings(tiny_engines):
    from runtime.core.folder import ModelFolder
    from runtime.sam2.memory import memory_pos_table

    consts = ModelFolder.open(tiny_engines).load_constants()
    table = memory_pos_table(consts)
    base, tpos = consts["maskmem_pos_enc"][0], consts["maskmem_tpos_enc"]
    assert table.shape == (len(tpos),) + base.shape and table.dtype == np.float32
    for i in range(len(tpos)):  # sam2: maskmem_pos_enc + maskmem_tpos_enc[num_maskmem - t_pos - 1]
        np.testing.assert_array_equal(table[i], base + tpos[i][:, None, None])


def test_tracked_positions_are_uploaded_once_per_pattern(tiny_engines):
    """A tracked object's memory positions repeat frame after frame: uploaded once, not per frame;
    each call still gets its objects' own encodings, padded with zeros."""
    from runtime.sam2.stages import POSITIONS_KEPT

    rng = np.random.default_rng(0)
    with FewShotSegmenter.load(tiny_engines, backend="onnxruntime") as seg:
        st, side = seg.stages, seg.size // 16
        base, tpos = st.consts["maskmem_pos_enc"][0], st.consts["maskmem_tpos_enc"]

        def expected(objects):  # sam2's sum, written out, per object and slot
            n = max(len(m["mem_tpos"]) for m in objects)
            out = np.zeros((len(objects), n, 64, side, side), np.float32)
            for i, m in enumerate(objects):
                for j, t in enumerate(m["mem_tpos"]):
                    out[i, j] = base + tpos[t][:, None, None]
            return out

        a, b = _memory(rng, 3, 2, side), _memory(rng, 3, 2, side)
        b["mem_tpos"] = a["mem_tpos"]
        first, again = st.upload_memory([a]), st.upload_memory([b])
        assert again["mem_pos"] is first["mem_pos"]  # same pattern: the same uploaded value
        assert again["mem_feats"] is not first["mem_feats"]
        np.testing.assert_array_equal(again["mem_pos"], expected([a]))
        two, one = dict(a, mem_tpos=[6, 5]), dict(a, mem_tpos=[6])
        for objects in ([two, one], [one, two]):  # the same indices, split otherwise
            np.testing.assert_array_equal(st.upload_memory(objects)["mem_pos"], expected(objects))
        patterns = [dict(a, mem_tpos=[i]) for i in range(POSITIONS_KEPT + 1)]
        held = st.upload_memory([patterns[0]])["mem_pos"]
        for m in patterns[1:]:
            st.upload_memory([m])
        assert st.upload_memory([patterns[0]])["mem_pos"] is not held  # the oldest was let go
        assert len(st._positions) == POSITIONS_KEPT


def test_cached_positions_stay_within_their_byte_budget(tiny_engines, monkeypatch):
    from runtime.sam2 import stages

    rng = np.random.default_rng(0)
    with FewShotSegmenter.load(tiny_engines, backend="onnxruntime") as seg:
        st, side = seg.stages, seg.size // 16
        m = _memory(rng, 2, 2, side)
        one = 2 * 64 * side * side * 4  # one object, two memories
        monkeypatch.setattr(stages, "POSITIONS_MAX_BYTES", 2 * one)
        for tpos in ([0, 1], [1, 2], [2, 3]):
            newest = st.upload_memory([dict(m, mem_tpos=tpos)])["mem_pos"]
        assert [k for k in st._positions] == [((1, 2),), ((2, 3),)]  # two fit the budget
        monkeypatch.setattr(stages, "POSITIONS_MAX_BYTES", 1)
        assert st.upload_memory([dict(m, mem_tpos=[2, 3])])["mem_pos"] is newest
        assert list(st._positions) == [((2, 3),)]  # over budget: the newest alone stays

def test_memory_attention_graph_masks_the_padding(tiny_engines):
    """The ONNX graph: object i of a padded batch == object i alone (the padding has weight 0)."""
    from export.onnx_export import ort_session
    from runtime.core.folder import ModelFolder

    folder = ModelFolder.open(tiny_engines)
    side = folder.manifest.model_config["image_size"] // 16
    sess = ort_session(tiny_engines / "memory_attention.onnx")
    rng = np.random.default_rng(1)
    vision = rng.standard_normal((1, 256, side, side)).astype(np.float32)
    objects = [_memory(rng, 1, 1, side), _memory(rng, 3, 5, side), _memory(rng, 2, 2, side)]
    table = _table(rng, side)
    (batched,) = sess.run(["conditioned_feat"], {"vision_feat": vision, **_packed(objects, table)})
    assert batched.shape == (3, 256, side, side)
    for i, m in enumerate(objects):
        (alone,) = sess.run(["conditioned_feat"], {"vision_feat": vision, **_packed([m], table)})
        rel = np.linalg.norm(batched[i] - alone[0]) / np.linalg.norm(alone[0])
        assert rel < 1e-6, f"object {i}: rel L2 {rel:.2e} between its batched and its own call"
    # Garbage in the padded slots changes nothing.
    packed = _packed(objects, table)
    packed["mem_feats"][0, 1:] = 1e3
    packed["mem_pos"][0, 1:] = 7.0
    packed["obj_ptrs"][0, 1:] = -1e3
    (noisy,) = sess.run(["conditioned_feat"], {"vision_feat": vision, **packed})
    np.testing.assert_allclose(noisy, batched, rtol=0, atol=1e-5)


def _fewshot_results(engines, **options):
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (200, 300, 3), np.uint8) for _ in range(7)]

    def mask(i):
        m = np.zeros((200, 300), bool)
        m[20 + 5 * i:120 + 3 * i, 30 + 7 * i:200] = True
        return m

    with FewShotSegmenter.load(engines, backend="onnxruntime", **options) as seg:
        # Different reference counts: the batch pads memories (5 refs -> 5 of 7) and pointers.
        for concept, k in (("one", 1), ("three", 3), ("five", 5), ("two", 2)):
            for j in range(k):
                seg.add_reference(imgs[j], mask(j + len(concept)), concept=concept)
        seg.add_reference(imgs[1], points=[(50, 60)], concept="click")
        before = dict(seg.stage_calls)
        res = seg.segment(imgs[6])
        calls = {k: seg.stage_calls[k] - before.get(k, 0) for k in ("memory_attention", "mask_decoder")}
    return res, calls


def test_fewshot_batched_concepts_match_one_by_one(tiny_engines):
    one, calls_one = _fewshot_results(tiny_engines, objects_per_call=1)
    batched, calls_batched = _fewshot_results(tiny_engines, objects_per_call=8)
    padded, calls_padded = _fewshot_results(tiny_engines, objects_per_call=8, pad_objects=True)
    chunked, calls_chunked = _fewshot_results(tiny_engines, pad_objects=True, objects_per_call=2)
    assert calls_one == {"memory_attention": 5, "mask_decoder": 5}
    # "one" and "click" have one reference each: the same memory shape, one call; the others alone.
    assert calls_batched == {"memory_attention": 4, "mask_decoder": 4}
    assert calls_padded == {"memory_attention": 1, "mask_decoder": 1}
    assert calls_chunked == {"memory_attention": 3, "mask_decoder": 3}  # 2 + 2 + 1
    assert list(batched) == list(padded) == list(one) == ["one", "three", "five", "two", "click"]
    for res in (batched, padded, chunked):
        for c in one:
            assert iou(res[c].mask, one[c].mask) >= IOU_MIN, c
            assert np.abs(res[c].logits - one[c].logits).max() < LOGITS_MAX_ABS, c
            assert res[c].iou == pytest.approx(one[c].iou, abs=1e-5)
    assert 0.02 < np.mean([one[c].mask.mean() for c in one]) < 0.98, "masks are trivially empty or full"


def test_tracker_batched_objects_match_one_by_one(stock_sam2_factory):
    from tests.runtime.test_sam2_predictors import scene

    _, _, engines = stock_sam2_factory("2.1")
    frames = [scene(t) for t in range(6)]
    disc = np.zeros((256, 256), bool)
    disc[60:100, 40:90] = True
    runs = {}
    for n, options in (("one", {"objects_per_call": 1}), ("batched", {"objects_per_call": 8}),
                       ("padded", {"objects_per_call": 8, "pad_objects": True})):
        with VideoTracker.load(engines, backend="onnxruntime", **options) as trk:
            trk.add_prompt(0, 1, frames[0], points=[[60, 80]], labels=[1])
            trk.add_prompt(0, 2, frames[0], box=[150, 30, 210, 90])
            trk.add_prompt(0, 3, frames[0], mask=disc)
            trk.add_prompt(3, 2, frames[3], points=[[180, 120]], labels=[1])  # object 2: 2 prompted frames
            before = trk.stage_calls.get("memory_attention", 0)
            runs[n] = [{i: (o.mask, o.logits) for i, o in out.objects.items()} for out in trk.propagate(frames)]
            runs[n, "calls"] = trk.stage_calls["memory_attention"] - before
    # Frames 1, 2, 4, 5 track all three objects, frame 3 objects 1 and 3. Objects 1 and 3 have the
    # same memory bank shape throughout; object 2's differs from frame 4 on (2 prompted frames).
    assert runs["one", "calls"] == 3 * 4 + 2
    assert runs["batched", "calls"] == 3 + 2 * 2 and runs["padded", "calls"] == 5
    for way in ("batched", "padded"):
        for one, other in zip(runs["one"], runs[way]):
            for obj_id, (mask, logits) in one.items():
                assert iou(other[obj_id][0], mask) >= IOU_MIN, way
                assert np.abs(other[obj_id][1] - logits).max() < LOGITS_MAX_ABS, way


def test_objects_per_call_default_and_checks(tiny_engines):
    # On ONNX Runtime's CPU provider one by one is the default (batched calls measured slower there).
    with FewShotSegmenter.load(tiny_engines, backend="onnxruntime") as seg:
        assert seg.stages.runners["memory_attention"].computes_on_cpu and seg.objects_per_call == 1
        limit = seg.stages.axis_max("objects")
    assert limit == 8  # the default --max-objects
    with FewShotSegmenter.load(tiny_engines, backend="onnxruntime", objects_per_call=limit) as seg:
        assert seg.objects_per_call == limit
    for bad in (0, limit + 1, 2.0, True):
        with pytest.raises(UsageError, match="objects_per_call"):
            FewShotSegmenter.load(tiny_engines, backend="onnxruntime", objects_per_call=bad)


def test_upload_refuses_more_objects_than_the_profile(tiny_engines):
    rng = np.random.default_rng(0)
    with FewShotSegmenter.load(tiny_engines, backend="onnxruntime") as seg:
        side = seg.size // 16
        with pytest.raises(ProfileLimitError, match="at most 8 .objects."):
            seg.stages.upload_memory([_memory(rng, 1, 1, side)] * 9)


def test_folder_without_the_objects_axis_asks_for_a_rebuild(tiny_engines, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(tiny_engines, old)
    m = json.loads((old / "manifest.json").read_text())
    ins = m["specs"]["memory_attention"]["inputs"]
    m["specs"]["memory_attention"]["inputs"] = [t for t in ins if not t["name"].endswith("_valid")]
    (old / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelFolderError, match="rebuild"):
        FewShotSegmenter.load(old, backend="onnxruntime")
