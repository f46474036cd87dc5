"""EngineSession: one opened folder shared by products; per-stream state stays in the products."""

from __future__ import annotations

import numpy as np
import pytest

from runtime import EngineSession, FewShotSegmenter, ImagePredictor, ModelFolderError, VideoTracker


def _frames(n=4, size=160, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        f = rng.integers(60, 120, (size, size, 3), dtype=np.uint8)
        f[40:90, 30 + 5 * i:80 + 5 * i] = (220, 40, 40)
        out.append(f)
    return out


@pytest.fixture(scope="module")
def stock(stock_sam2_factory):
    return stock_sam2_factory("2.1")[2]


def test_two_trackers_share_one_session_and_keep_their_own_memory(stock):
    """Two video streams on one set of runners give what two separate trackers give."""
    a_frames, b_frames = _frames(seed=1), _frames(seed=2)

    def track(trk, frames, box):
        trk.add_prompt(0, "o", frames[0], box=box)
        return [out["o"].logits for out in trk.propagate(frames)]

    with EngineSession.open(stock, product="VideoTracker", backend="onnxruntime") as session:
        a, b = VideoTracker(session), VideoTracker(session)
        # interleave the two streams frame by frame: their memories must not mix
        a.add_prompt(0, "o", a_frames[0], box=(30, 40, 80, 90))
        b.add_prompt(0, "o", b_frames[0], box=(25, 35, 85, 95))
        ia, ib = a.propagate(a_frames), b.propagate(b_frames)
        shared = [(next(ia)["o"].logits, next(ib)["o"].logits) for _ in a_frames]
        runners = dict(session.runners)
        a.close()  # a product made from a session does not close it
        assert not session.closed and all(r.is_active for r in runners.values())
    assert session.closed and not any(r.is_active for r in runners.values())
    with VideoTracker.load(stock, backend="onnxruntime") as alone:
        ref_a = track(alone, a_frames, (30, 40, 80, 90))
    with VideoTracker.load(stock, backend="onnxruntime") as alone:
        ref_b = track(alone, b_frames, (25, 35, 85, 95))
    for (la, lb), ra, rb in zip(shared, ref_a, ref_b):
        np.testing.assert_array_equal(la, ra)
        np.testing.assert_array_equal(lb, rb)


def test_a_predictor_and_a_segmenter_on_one_session(stock):
    with EngineSession.open(stock, product="ImagePredictor", backend="onnxruntime") as session:
        pred, seg = ImagePredictor(session), FewShotSegmenter(session)
        img = _frames(1)[0]
        pred.set_image(img)
        masks, ious, _ = pred.predict(box=(30, 40, 80, 90))
        seg.add_reference(img, masks[int(np.argmax(ious))])
        assert seg.segment(_frames(2)[1])["default"].mask.shape == img.shape[:2]
        assert session.stage_calls["image_encoder"] == 3  # one session counted both products' calls


def test_products_refuse_folders_of_another_kind(tiny_engines, stock):
    with pytest.raises(ModelFolderError, match="which ImagePredictor cannot run: it runs 'sam2' folders.*"
                                               "open this one with FewShotSegmenter"):
        ImagePredictor.load(tiny_engines)
    with EngineSession.open(tiny_engines, backend="onnxruntime") as session:
        with pytest.raises(ModelFolderError, match="VideoTracker cannot run"):
            VideoTracker(session)


def test_wrapped_runners_are_restored(tiny_engines):
    seen = []

    class Spy:
        def __init__(self, stage, inner):
            self.stage, self.inner = stage, inner

        def infer(self, feeds):
            seen.append(self.stage)
            return self.inner.infer(feeds)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    with FewShotSegmenter.load(tiny_engines, backend="onnxruntime") as seg:
        img = _frames(1)[0]
        mask = np.zeros(img.shape[:2], bool)
        mask[40:90, 30:80] = True
        original = dict(seg.session.runners)
        with seg.session.wrapped(lambda s, r: Spy(s, r)):
            seg.add_reference(img, mask)
        assert seen == ["image_encoder", "mask_decoder", "memory_encoder"]
        assert seg.session.runners == original


def test_onnxruntime_memory_modes_give_the_same_masks(tiny_engines):
    """memory="shared" (one CPU arena for all sessions) and "off" change where memory lives, not results."""
    from runtime.errors import UsageError

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    mask = np.zeros((256, 256), bool)
    mask[80:170, 60:200] = True
    out = {}
    for mode in ("arena", "shared", "off"):
        with FewShotSegmenter.load(tiny_engines, backend="onnxruntime", memory=mode) as seg:
            seg.add_reference(img, mask, concept="c")
            out[mode] = seg.segment(img[::-1].copy()).concepts["c"].logits
    np.testing.assert_allclose(out["shared"], out["arena"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(out["off"], out["arena"], rtol=0, atol=1e-4)
    with pytest.raises(UsageError, match="memory mode"):
        FewShotSegmenter.load(tiny_engines, backend="onnxruntime", memory="pooled")
