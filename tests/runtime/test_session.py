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


def test_preprocess_modes_open_the_graph_where_asked(tiny_engines):
    """"backend" runs frames through the folder's preprocess graph, "host" and CPU "auto" resize
    in NumPy; the masks are the same either way."""
    from runtime.sam2.spec import PREPROCESS

    rng = np.random.default_rng(3)
    ref = rng.integers(0, 256, (300, 420, 3), dtype=np.uint8)
    mask = np.zeros((300, 420), bool)
    mask[90:200, 100:300] = True
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    out, calls = {}, []
    for mode in ("host", "auto", "backend"):
        with FewShotSegmenter.load(tiny_engines, backend="onnxruntime", preprocess=mode) as seg:
            assert (PREPROCESS in seg.session.runners) == (mode == "backend")
            if mode == "backend":
                runner = seg.session.runners[PREPROCESS]
                infer = runner.infer
                runner.infer = lambda feeds: calls.append(feeds["frame"].shape) or infer(feeds)
            seg.add_reference(ref, mask, concept="c")
            out[mode] = seg.segment(frame).concepts["c"]
    assert calls == [(300, 420, 3), (480, 640, 3)]  # the reference and the frame, as uint8 frames
    for mode in ("auto", "backend"):
        np.testing.assert_allclose(out[mode].logits, out["host"].logits, rtol=0, atol=1e-4)
        assert (out[mode].mask == out["host"].mask).all()


def test_frames_outside_the_graph_profile_are_resized_on_the_host(stock):
    with ImagePredictor.load(stock, backend="onnxruntime", preprocess="backend") as pred:
        st = pred.stages
        hi = st.runners["preprocess"].spec.axis_ranges["frame_w"][2]
        assert st.on_backend(np.zeros((480, 640, 3), np.uint8))
        assert not st.on_backend(np.zeros((100, hi + 1, 3), np.uint8))  # wider than the profile
        assert not st.on_backend(np.zeros((8, 640, 3), np.uint8))       # below its smallest side
        assert not st.on_backend(np.zeros((480, 640, 3), np.float32))   # float frames: the host's path
        wide = np.random.default_rng(0).integers(0, 256, (100, hi + 1, 3), dtype=np.uint8)
        pred.set_image(wide)  # works, on the host
        masks, _, _ = pred.predict(points=[[50, 40]], labels=[1])
        assert masks.shape == (3, 100, hi + 1)


def test_preprocess_mode_errors(tiny_engines, stock, tmp_path):
    import json
    import shutil

    from runtime.core.backends import edge_stages_to_run
    from runtime.core.folder import ModelFolder
    from runtime.errors import BackendUnavailable, UsageError

    with pytest.raises(UsageError, match="unknown preprocess mode 'gpu'"):
        FewShotSegmenter.load(tiny_engines, backend="onnxruntime", preprocess="gpu")
    with pytest.raises(UsageError, match="unknown postprocess mode 'device'"):
        FewShotSegmenter.load(tiny_engines, backend="onnxruntime", postprocess="device")
    folder = ModelFolder.open(tiny_engines)
    gpu = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    both = ["preprocess", "postprocess"]
    assert list(edge_stages_to_run(folder, "onnxruntime", gpu)) == both  # a few-shot folder: no video graph
    tracking = ModelFolder.open(stock)
    assert list(edge_stages_to_run(tracking, "onnxruntime", gpu)) == ["preprocess", "video_preprocess", "postprocess"]
    assert list(edge_stages_to_run(folder, "onnxruntime", gpu, {"preprocess": "host"})) == ["postprocess"]
    assert edge_stages_to_run(folder, "onnxruntime", gpu, {e: "host" for e in both}) == {}
    assert list(edge_stages_to_run(tracking, "onnxruntime", gpu, stages=VideoTracker.EDGES)) == [
        "video_preprocess", "postprocess"]
    with pytest.raises(UsageError, match="this product runs no postprocess graph .* use postprocess='auto' or 'host'"):
        edge_stages_to_run(folder, "onnxruntime", gpu, {"postprocess": "backend"}, stages=("preprocess",))
    with pytest.raises(UsageError, match="unknown edge option 'video_preprocess'"):
        edge_stages_to_run(folder, "onnxruntime", gpu, {"video_preprocess": "host"})
    # Each product opens the edge graphs it uses, and only those.
    with VideoTracker.load(stock, backend="onnxruntime", preprocess="backend", postprocess="host") as trk:
        assert [s for s in trk.session.runners if s not in tracking.specs] == ["video_preprocess"]
    with FewShotSegmenter.load(tiny_engines, backend="onnxruntime", preprocess="backend") as seg:
        assert [s for s in seg.session.runners if s not in folder.specs] == ["preprocess"]
    assert edge_stages_to_run(folder, "onnxruntime", ["CPUExecutionProvider"]) == {}
    assert list(edge_stages_to_run(folder, "onnxruntime", None, {"postprocess": "backend"})) == ["postprocess"]
    assert edge_stages_to_run(folder, "tensorrt", None) == {}  # no engine built: the host does both
    with pytest.raises(BackendUnavailable, match="postprocess='backend' but the folder has no TensorRT engine"):
        edge_stages_to_run(folder, "tensorrt", None, {"postprocess": "backend"})
    old = tmp_path / "old"
    shutil.copytree(tiny_engines, old)
    m = json.loads((old / "manifest.json").read_text())
    del m["edge_specs"], m["edge_stages"]  # a folder from before the preprocess graph
    (old / "manifest.json").write_text(json.dumps(m))
    with FewShotSegmenter.load(old, backend="onnxruntime") as seg:  # auto: the host resizes
        assert "preprocess" not in seg.session.runners
    with pytest.raises(UsageError, match="no preprocess graph"):
        FewShotSegmenter.load(old, backend="onnxruntime", preprocess="backend")
    with pytest.raises(UsageError, match="no postprocess graph"):
        FewShotSegmenter.load(old, backend="onnxruntime", postprocess="backend")
    older = tmp_path / "older"
    shutil.copytree(stock, older)
    m = json.loads((older / "manifest.json").read_text())
    del m["edge_specs"]["video_preprocess"], m["edge_stages"]["video_preprocess"]  # before the video loader's graph
    (older / "manifest.json").write_text(json.dumps(m))
    with VideoTracker.load(older, backend="onnxruntime", postprocess="backend") as trk:
        assert "video_preprocess" not in trk.session.runners and "postprocess" in trk.session.runners  # host resizes
    with pytest.raises(UsageError, match="no video_preprocess graph .* preprocess='host'"):
        VideoTracker.load(older, backend="onnxruntime", preprocess="backend")


def _same_masks(got_mask, got_logits, ref_logits, thr=0.0):
    """Masks equal wherever the host's logits are farther from the threshold than the two paths'
    logits differ (OpenCV's bilinear rounds source coordinates unlike torch's: < 1e-3 apart)."""
    margin = float(np.abs(got_logits - ref_logits).max())
    clear = np.abs(ref_logits - thr) > margin
    return margin < 2e-3 and bool((got_mask == (ref_logits > thr))[clear].all()) and clear.mean() > 0.9


def test_postprocess_modes_give_the_host_masks_and_only_what_is_asked(tiny_engines):
    """"backend" makes frame masks in the folder's postprocess graph, one call for the concepts of
    a decoder call; the logits and masks are the host's (up to OpenCV's rounding); without
    ``return_logits`` only masks come back."""
    from runtime.sam2.spec import POSTPROCESS

    rng = np.random.default_rng(5)
    ref = rng.integers(0, 256, (300, 420, 3), dtype=np.uint8)
    masks = {c: np.zeros((300, 420), bool) for c in "ab"}
    masks["a"][90:200, 100:300] = True
    masks["b"][10:80, 20:120] = True
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    out, calls = {}, []
    for mode, logits in (("host", True), ("backend", True), ("backend", False)):
        with FewShotSegmenter.load(tiny_engines, backend="onnxruntime", postprocess=mode,
                                   objects_per_call=2, return_logits=logits) as seg:
            assert (POSTPROCESS in seg.session.runners) == (mode == "backend")
            if mode == "backend":
                runner = seg.session.runners[POSTPROCESS]
                infer = runner.infer
                runner.infer = lambda feeds: calls.append(feeds["low_res"].shape) or infer(feeds)
            for c in "ab":
                seg.add_reference(ref, masks[c], concept=c)
            out[mode, logits] = seg.segment(frame).concepts
    assert calls == [(2, 64, 64)] * 2  # one call per frame for both concepts
    host = out["host", True]
    for c in "ab":
        got = out["backend", True][c]
        assert got.logits.shape == (480, 640) and got.mask.dtype == np.bool_
        assert _same_masks(got.mask, got.logits, host[c].logits)
        masks_only = out["backend", False][c]
        assert masks_only.logits is None and (masks_only.mask == got.mask).all()


def test_trackers_and_predictors_postprocess_on_the_backend(stock):
    """VideoTracker (all objects of a frame in one call) and ImagePredictor (its 3 masks in one)."""
    frames = _frames(3, size=200, seed=4)
    res = {}
    for mode, logits in (("host", True), ("backend", True), ("backend", False)):
        with VideoTracker.load(stock, backend="onnxruntime", postprocess=mode, return_logits=logits,
                               objects_per_call=2) as trk:
            trk.add_prompt(0, 1, frames[0], box=(30, 40, 90, 90))
            trk.add_prompt(0, 2, frames[0], points=[[150, 150]], labels=[1])
            res[mode, logits] = list(trk.propagate(frames))
        if not logits:
            continue
        with ImagePredictor.load(stock, backend="onnxruntime", postprocess=mode) as pred:
            pred.set_image(frames[1])
            res[mode, "logits"] = pred.predict(points=[[60, 60]], labels=[1], return_logits=True)[0]
            res[mode, "masks"] = pred.predict(points=[[60, 60]], labels=[1])[0]
    for host, dev, masks_only in zip(res["host", True], res["backend", True], res["backend", False]):
        for i in (1, 2):
            assert dev[i].object_score == host[i].object_score
            assert _same_masks(dev[i].mask, dev[i].logits, host[i].logits)
            assert masks_only[i].logits is None and (masks_only[i].mask == dev[i].mask).all()
    assert res["backend", "logits"].shape == (3, 200, 200) and res["backend", "masks"].dtype == np.bool_
    assert _same_masks(res["backend", "masks"], res["backend", "logits"], res["host", "logits"])


def test_cpu_provider_runs_the_fused_attention_files_with_the_same_masks(tiny_engines):
    """On ONNX Runtime's CPU provider the image encoder and memory attention run from their
    cpu-fused files (block-wise attention); GPU providers and forced variants keep the FP32 files."""
    from runtime.core.backends import onnx_variants
    from runtime.core.folder import ModelFolder

    folder = ModelFolder.open(tiny_engines)
    stages = tuple(folder.specs)
    cpu = onnx_variants(folder, stages, "onnxruntime", "off", ["CPUExecutionProvider"])
    assert cpu == {"image_encoder": "cpu-fused", "memory_encoder": "fp32", "memory_attention": "cpu-fused",
                   "mask_decoder": "fp32"}
    gpu = onnx_variants(folder, stages, "onnxruntime", "off", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert set(gpu.values()) == {"fp32"}
    rng = np.random.default_rng(9)
    ref = rng.integers(0, 256, (300, 420, 3), dtype=np.uint8)
    mask = np.zeros((300, 420), bool)
    mask[60:220, 90:310] = True
    out = {}
    for name, variants in (("fused", None), ("fp32", {"image_encoder": "fp32", "memory_attention": "fp32"})):
        with EngineSession.open(tiny_engines, product="FewShotSegmenter", backend="onnxruntime",
                                providers=["CPUExecutionProvider"], variants=variants) as session:
            assert session.stage_files["memory_attention"] == (
                "memory_attention.cpu-fused.onnx" if name == "fused" else "memory_attention.onnx")
            seg = FewShotSegmenter(session)
            seg.add_reference(ref, mask)
            seg.add_reference(ref[:, ::-1].copy(), mask[:, ::-1].copy())
            out[name] = seg.segment(ref[::-1].copy())["default"]
    a, b = out["fused"], out["fp32"]
    assert np.linalg.norm(a.logits - b.logits) / np.linalg.norm(b.logits) < 1e-5
    assert (a.mask == b.mask).mean() > 0.9999


def test_io_binding_chains_stages_on_ortvalues_with_the_same_results(tiny_engines, stock):
    """ONNX Runtime's IOBinding path (the default on GPU providers, forced here on the CPU provider,
    where its outputs are host OrtValues): every stage after the first is fed the earlier stages'
    OrtValues as they are, and the few-shot segmenter, the predictor and the tracker (edge graphs
    on the backend too) give exactly the results of the plain NumPy path."""
    import onnxruntime as ort

    from runtime.sam2.fewshot import FewShotSegmenter as Seg

    frames = _frames(3, size=200, seed=5)
    mask = np.zeros((200, 200), bool)
    mask[40:90, 30:80] = True
    results, fed = {}, []
    for bind in (False, True):
        kw = dict(backend="onnxruntime", io_binding=bind, preprocess="backend", postprocess="backend")
        with EngineSession.open(tiny_engines, **kw) as session:
            assert {r.device for r in session.runners.values()} == ({"cpu"} if bind else {None})
            seg = Seg(session)
            seg.add_reference(frames[0], mask, concept="c")
            if bind:
                def spy(stage, runner):
                    def infer(feeds):
                        fed.extend((stage, k) for k, v in feeds.items() if isinstance(v, ort.OrtValue))
                        return runner.infer(feeds)
                    return type("Spy", (), {"infer": staticmethod(infer), "__getattr__":
                                            lambda self, a: getattr(runner, a)})()
                with session.wrapped(spy):
                    res = seg.segment(frames[1]).concepts["c"]
            else:
                res = seg.segment(frames[1]).concepts["c"]
            results[bind, "fewshot"] = (res.mask, res.logits)
        with EngineSession.open(stock, product="VideoTracker", edges=VideoTracker.EDGES, **kw) as session:
            trk = VideoTracker(session)
            trk.add_prompt(0, 1, frames[0], box=(30, 40, 90, 90))
            results[bind, "tracker"] = [(o[1].mask, o[1].logits) for o in trk.propagate(frames)]
        with EngineSession.open(stock, product="ImagePredictor", **kw) as session:
            pred = ImagePredictor(session)
            pred.set_image(frames[2])
            results[bind, "predictor"] = pred.predict(points=[[60, 60]], labels=[1], return_logits=True)
    # the frame's model input, the encoder's features, the uploaded memories and memory attention's
    # output reached the next stages as OrtValues, as they were returned
    assert set(fed) == {("image_encoder", "image"), ("mask_decoder", "feat_s0"), ("mask_decoder", "feat_s1"),
                        ("mask_decoder", "image_embed"), ("memory_attention", "vision_feat"),
                        *(("memory_attention", k) for k in ("mem_feats", "mem_pos", "mem_valid", "obj_ptrs",
                                                            "obj_ptr_pos", "ptr_valid"))}
    np.testing.assert_array_equal(results[True, "fewshot"][1], results[False, "fewshot"][1])
    for got, ref in zip(results[True, "tracker"], results[False, "tracker"]):
        np.testing.assert_array_equal(got[1], ref[1])
    for got, ref in zip(results[True, "predictor"], results[False, "predictor"]):
        np.testing.assert_array_equal(got, ref)
