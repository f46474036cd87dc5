"""Stock SAM2 on the engines vs sam2's own predictors (code nobody here wrote).

One random checkpoint, written in the official format, is loaded both by
sam2's ``SAM2ImagePredictor`` / ``SAM2VideoPredictor`` and by
``export.build`` (stock config, no adapters); the runtime's
:class:`ImagePredictor` and :class:`VideoTracker` must agree with them.
hiera-tiny at 256 px. Differences we match on purpose, and why:

- the official video loader resizes JPEG frames with Pillow (bicubic); the
  runtime decodes the same JPEG files with PIL and resizes them as the loader
  (the main video is 256x256, unresized; a portrait one is resized);
- ``SAM2ImagePredictor`` hard-codes the backbone feature sizes of a 1024 px
  model; at 256 px the test sets them to 64/32/16;
- sam2's hole filling needs its CUDA extension (absent here: it skips with a
  warning), so the official predictor runs with ``fill_hole_area=0``.

The checkpoint's object-score bias is raised by 2 (``tests/conftest.py``,
``stock_sam2``) so the random model sees the objects and masks are compared
for real; the video test also checks they are neither empty nor full.
"""

from __future__ import annotations


import numpy as np
import pytest

from runtime.sam2.predictor import ImagePredictor
from runtime.errors import InputError
from runtime.sam2.tracker import VideoTracker

SIZE = 256
NUM_FRAMES = 30
IOU_MIN = 0.999
REL_L2_MAX = 1e-4


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


@pytest.fixture(scope="module", params=["2.1", "2.0"])
def stock(request, stock_sam2_factory):
    """(ModelChoice, official-format checkpoint path, model folder) for one SAM2 version."""
    return stock_sam2_factory(request.param)


def scene(t: int, size=(SIZE, SIZE), seed: int = 0) -> np.ndarray:
    """Frame t of a synthetic video: a disc moving right, a diamond moving down, noise."""
    h, w = size
    rng = np.random.default_rng(seed + t)
    img = (rng.random((h, w, 3)) * 40 + 60).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    img[(yy - 80) ** 2 + (xx - 60 - 2 * t) ** 2 < 30 ** 2] = (220, 40, 40)
    img[np.abs(yy - 60 - 3 * t) + np.abs(xx - 180) < 25] = (30, 200, 60)
    return img


# ------------------------------------------------------------------- images
IMAGE_PROMPTS = [
    dict(points=[[60, 70]], labels=[1], multimask=True),
    dict(points=[[60, 70], [150, 40]], labels=[1, 0], multimask=False),
    dict(box=[20, 30, 110, 130], multimask=False),
    dict(box=[20, 30, 110, 130], points=[[200, 150]], labels=[0], multimask=True),
]


def test_image_predictor_matches_sam2_image_predictor(stock):
    """Point, box and box+point prompts, single and multi mask, and a fed-back mask input,
    on a non-square image (the resize to 256 is antialiased bilinear on both sides)."""
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    choice, ckpt, engines = stock
    official = SAM2ImagePredictor(build_sam2(choice.config_name, str(ckpt), device="cpu",
                                             hydra_overrides_extra=choice.size_overrides()))
    official._bb_feat_sizes = [(SIZE // 4,) * 2, (SIZE // 8,) * 2, (SIZE // 16,) * 2]
    image = scene(3, size=(200, 300))
    official.set_image(image)
    with ImagePredictor.load(engines, backend="onnxruntime") as ours:
        ours.set_image(image)
        for prompt in IMAGE_PROMPTS:
            kw = {k: np.asarray(v, np.float32) for k, v in prompt.items() if k != "multimask"}
            ref = official.predict(point_coords=kw.get("points"), point_labels=kw.get("labels"),
                                   box=kw.get("box"), multimask_output=prompt["multimask"],
                                   return_logits=True)
            got = ours.predict(**kw, multimask=prompt["multimask"], return_logits=True)
            assert got[0].shape == ref[0].shape == ((3 if prompt["multimask"] else 1), 200, 300)
            for g, r in zip(got[0], ref[0]):
                assert iou(g > 0, r > 0) >= IOU_MIN, prompt
            assert rel_l2(got[0], ref[0]) < REL_L2_MAX, prompt
            np.testing.assert_allclose(got[1], ref[1], atol=1e-4)
            assert rel_l2(got[2], ref[2]) < REL_L2_MAX
        # Refine: feed the best low-res mask back with a new click.
        _, scores, low = official.predict(point_coords=np.array([[60, 70]]), point_labels=np.array([1]))
        best = low[int(np.argmax(scores))][None]
        ref = official.predict(point_coords=np.array([[60, 70], [90, 100]]),
                               point_labels=np.array([1, 1]), mask_input=best,
                               multimask_output=False, return_logits=True)
        got = ours.predict(points=[[60, 70], [90, 100]], labels=[1, 1], mask_input=best,
                           multimask=False, return_logits=True)
        assert iou(got[0][0] > 0, ref[0][0] > 0) >= IOU_MIN
        assert rel_l2(got[0], ref[0]) < REL_L2_MAX


# -------------------------------------------------------------------- video
@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """NUM_FRAMES JPEG frames on disk (the official loader's input) and the same frames
    decoded by PIL (the runtime's input)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("video")
    for t in range(NUM_FRAMES):
        Image.fromarray(scene(t)).save(folder / f"{t:05d}.jpg", quality=95)
    frames = [np.array(Image.open(folder / f"{t:05d}.jpg").convert("RGB")) for t in range(NUM_FRAMES)]
    return folder, frames


def video_prompts():
    """Two objects: a click and a box on frame 0, then a mask (object 1) on frame 12
    and a click (object 2) on frame 20, all given before tracking."""
    disc = np.zeros((SIZE, SIZE), bool)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    disc[(yy - 80) ** 2 + (xx - 84) ** 2 < 30 ** 2] = True
    return [
        dict(frame=0, obj=1, points=[[60, 80]], labels=[1]),
        dict(frame=0, obj=2, box=[150, 30, 210, 90]),
        dict(frame=12, obj=1, mask=disc),
        dict(frame=20, obj=2, points=[[180, 120]], labels=[1]),
    ]


def _official_video(choice, ckpt, folder, prompts):
    """sam2's ``SAM2VideoPredictor`` on the JPEG folder: {frame: {object: logits at the video's size}}."""
    from sam2.build_sam import build_sam2_video_predictor

    official = build_sam2_video_predictor(choice.config_name, str(ckpt), device="cpu",
                                          hydra_overrides_extra=choice.size_overrides())
    official.fill_hole_area = 0
    state = official.init_state(str(folder))
    for p in prompts:
        if "mask" in p:
            official.add_new_mask(state, p["frame"], p["obj"], p["mask"])
        else:
            official.add_new_points_or_box(state, p["frame"], p["obj"], points=p.get("points"),
                                           labels=p.get("labels"), box=p.get("box"))
    return {f: {i: m[k, 0].numpy() for k, i in enumerate(ids)} for f, ids, m in official.propagate_in_video(state)}


def _compare_tracking(ours, frames, prompts, ref):
    """Prompt and propagate ``ours``; (worst IoU, worst logits rel L2, median foreground) against ``ref``."""
    for p in prompts:
        ours.add_prompt(p["frame"], p["obj"], frames[p["frame"]], points=p.get("points"),
                        labels=p.get("labels"), box=p.get("box"), mask=p.get("mask"))
    bound = 2 * (2 + ours.stages.cfg["max_obj_ptrs_in_encoder"] + 1)
    worst_iou, worst_rel, seen, foreground = 1.0, 0.0, [], []
    ids = {p["obj"] for p in prompts}
    for out in ours.propagate(frames):
        seen.append(out.frame_idx)
        assert set(out.objects) == ids
        for obj_id, got in out.objects.items():
            r = ref[out.frame_idx][obj_id]
            worst_iou = min(worst_iou, iou(got.mask, r > 0))
            worst_rel = max(worst_rel, rel_l2(got.logits, r))
            foreground.append(float((r > 0).mean()))
        assert ours.stored_frames() <= bound  # the bank does not grow with the video
    assert seen == list(range(len(frames)))
    return worst_iou, worst_rel, float(np.median(foreground))


def test_video_tracker_matches_sam2_video_predictor(stock, video):
    choice, ckpt, engines = stock
    folder, frames = video
    ref = _official_video(choice, ckpt, folder, video_prompts())
    assert sorted(ref) == list(range(NUM_FRAMES))
    with VideoTracker.load(engines, backend="onnxruntime") as ours:
        worst_iou, worst_rel, fg = _compare_tracking(ours, frames, video_prompts(), ref)
    assert 0.05 < fg < 0.95, "masks are trivially empty or full"
    print(f"\nSAM2 {choice.sam2_version} video: worst per-frame IoU {worst_iou:.6f}, "
          f"worst logits rel L2 {worst_rel:.2e}, median foreground {fg:.2f}")
    assert worst_iou >= IOU_MIN
    assert worst_rel < REL_L2_MAX


@pytest.mark.parametrize("preprocess", ["host", "backend"])
def test_video_tracker_resizes_frames_as_sam2s_video_loader(stock_sam2_factory, tmp_path, preprocess):
    """A portrait video (320x200 frames: sam2's loader stretches them to 256x256 with Pillow's
    bicubic, vertical pass first in Pillow 13): the tracker's masks match SAM2VideoPredictor's
    with the resize on the host (NumPy) and in the folder's video preprocess graph."""
    from PIL import Image

    from tests.pillow_order import FITTED, WHY_NOT

    if not FITTED:
        pytest.skip(WHY_NOT)
    choice, ckpt, engines = stock_sam2_factory("2.1")
    for t in range(8):
        Image.fromarray(scene(t, size=(320, 200))).save(tmp_path / f"{t:05d}.jpg", quality=95)
    frames = [np.array(Image.open(tmp_path / f"{t:05d}.jpg").convert("RGB")) for t in range(8)]
    prompts = [dict(frame=0, obj=1, points=[[60, 80]], labels=[1]), dict(frame=0, obj=2, box=[150, 30, 199, 90])]
    ref = _official_video(choice, ckpt, tmp_path, prompts)
    with VideoTracker.load(engines, backend="onnxruntime", preprocess=preprocess) as ours:
        assert ("video_preprocess" in ours.session.runners) == (preprocess == "backend")
        worst_iou, worst_rel, fg = _compare_tracking(ours, frames, prompts, ref)
    assert 0.02 < fg < 0.95, "masks are trivially empty or full"
    print(f"\nportrait video, preprocess={preprocess}: worst per-frame IoU {worst_iou:.6f}, "
          f"worst logits rel L2 {worst_rel:.2e}, median foreground {fg:.2f}")
    assert worst_iou >= IOU_MIN and worst_rel < REL_L2_MAX, (worst_iou, worst_rel)


# ---------------------------------------------------------------- bad input
def test_tracker_and_predictor_reject_bad_input(stock):
    _, _, engines = stock
    frame = scene(0)
    with VideoTracker.load(engines, backend="onnxruntime") as trk:
        with pytest.raises(InputError, match="outside the 256x256 image"):
            trk.add_prompt(0, 1, frame, points=[[300, 10]], labels=[1])
        with pytest.raises(InputError, match="2 points but 1 labels"):
            trk.add_prompt(0, 1, frame, points=[[10, 10], [20, 20]], labels=[1])
        with pytest.raises(InputError, match="no object to track"):
            next(trk.propagate([frame]))
        trk.add_prompt(0, 1, frame, points=[[60, 80]], labels=[1])
        with pytest.raises(InputError, match="unknown object id 7"):
            trk.remove_object(7)
        with pytest.raises(InputError, match="frame 1 is 128x96 but this video's frames are 256x256"):
            list(trk.propagate([frame, frame[:96, :128]]))
        with pytest.raises(InputError, match="after propagate"):
            trk.add_prompt(1, 1, frame, points=[[60, 80]], labels=[1])
        trk.reset()
        trk.add_prompt(0, 1, frame, points=[[60, 80]], labels=[1])
        streamed = trk.track_frame(1, scene(1) / np.float32(255))  # frame by frame, no propagate()
        assert streamed.frame_idx == 1 and streamed[1].mask.shape == (SIZE, SIZE)
        trk.reset()
        trk.add_prompt(0, 1, frame, points=[[60, 80]], labels=[1])
        trk.add_prompt(2, 2, frame, box=[150, 30, 210, 90])
        with pytest.raises(InputError, match="frame 0 comes before an object's first prompt"):
            list(trk.propagate([frame] * 3))
        trk.reset()
        with pytest.raises(InputError, match="mask is"):
            trk.add_prompt(0, 1, frame, mask=np.ones((10, 10), bool))
    with ImagePredictor.load(engines, backend="onnxruntime") as pred:
        with pytest.raises(InputError, match="set_image"):
            pred.predict(points=[[1, 1]], labels=[1])
        pred.set_image(frame)
        with pytest.raises(InputError, match="x1 > x0"):
            pred.predict(box=[50, 50, 10, 10])
        with pytest.raises(InputError, match="mask_input must be one low-res mask of 64x64"):
            pred.predict(points=[[1, 1]], labels=[1], mask_input=np.zeros((1, 32, 32)))
