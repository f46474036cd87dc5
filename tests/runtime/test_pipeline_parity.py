"""End to end: the runtime (ONNX Runtime) against the PyTorch reference, fp32.

Same random checkpoint (seed 0), same inputs: per target mask IoU >= 0.999 and
logits relative L2 <= 1e-4, for k = 1, 3, 8 shots, two concepts at once, point
references, image sizes unlike the model input and not square.
"""

import numpy as np
import pytest

from export.reference import TorchFewShotSegmenter
from runtime import FewShotSegmenter

IOU_MIN, REL_L2_MAX = 0.999, 1e-4


def _image(rng, h, w):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _mask(rng, h, w):
    m = np.zeros((h, w), bool)
    y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
    m[y: y + h // 3, x: x + w // 3] = True
    return m


def _compare(ref_res, rt_res):
    stats = {}
    for concept, a in ref_res.concepts.items():
        b = rt_res[concept]
        assert b.logits.shape == a.logits.shape and b.mask.dtype == np.bool_
        union = (a.mask | b.mask).sum()
        iou = 1.0 if union == 0 else (a.mask & b.mask).sum() / union
        rel = np.linalg.norm(a.logits - b.logits) / np.linalg.norm(a.logits)
        stats[concept] = (iou, rel)
        assert iou >= IOU_MIN and rel <= REL_L2_MAX, (concept, iou, rel)
        assert abs(a.iou - b.iou) < 1e-4
    return stats


@pytest.fixture(scope="module")
def pair(tiny_engines, tiny_model):
    ref = TorchFewShotSegmenter(tiny_model)
    seg = FewShotSegmenter.load(tiny_engines, backend="onnxruntime")
    yield ref, seg
    seg.close()


@pytest.mark.parametrize("shots", [1, 3, 8])
def test_k_shot_parity(pair, shots):
    ref, seg = pair
    ref.clear(), seg.clear()
    rng = np.random.default_rng(shots)
    for _ in range(shots):
        h, w = rng.integers(120, 400, 2)
        img, mask = _image(rng, h, w), _mask(rng, h, w)
        ref.add_reference(img, mask, concept="thing")
        seg.add_reference(img, mask, concept="thing")
    for h, w in ((333, 517), (256, 256), (97, 181)):
        target = _image(rng, h, w)
        stats = _compare(ref.segment(target), seg.segment(target))
        print(f"k={shots} target {h}x{w}: IoU {stats['thing'][0]:.5f}, rel L2 {stats['thing'][1]:.1e}")


def test_two_concepts_and_point_reference(pair):
    ref, seg = pair
    ref.clear(), seg.clear()
    rng = np.random.default_rng(11)
    for concept, shots in (("cat", 3), ("dog", 2)):
        for _ in range(shots):
            img, mask = _image(rng, 240, 320), _mask(rng, 240, 320)
            ref.add_reference(img, mask, concept=concept)
            seg.add_reference(img, mask, concept=concept)
    img = _image(rng, 300, 200)
    for obj in (ref, seg):
        obj.add_reference(img, points=[(50, 60), (120, 200)], labels=[1, 0], concept="pts")
        obj.add_reference(img, box=(10, 20, 150, 250), concept="box")
    target = _image(rng, 211, 389)
    stats = _compare(ref.segment(target), seg.segment(target))
    assert set(stats) == {"cat", "dog", "pts", "box"}


def test_sam2_0_config_parity(tmp_path_factory):
    """SAM2.0 configs (no temporal pointer encodings) through the same runtime."""
    from conftest import build_engines
    from export.assembly import assemble
    from export.models import ModelChoice

    folder = build_engines(tmp_path_factory.mktemp("e20") / "tiny20", version="2.0")
    model, _ = assemble(ModelChoice("tiny", "2.0", 256), random_weights=True, seed=0)
    ref, seg = TorchFewShotSegmenter(model), FewShotSegmenter.load(folder, backend="onnxruntime")
    rng = np.random.default_rng(5)
    for _ in range(4):
        img, mask = _image(rng, 200, 300), _mask(rng, 200, 300)
        ref.add_reference(img, mask)
        seg.add_reference(img, mask)
    target = _image(rng, 150, 260)
    _compare(ref.segment(target), seg.segment(target))
    seg.close()


def _stroke(h, w, y0, x0, length, width=1):
    """A diagonal-ish stroke mask (a scribble as SANSA draws one: a few pixels wide)."""
    m = np.zeros((h, w), bool)
    for t in range(length):
        y, x = y0 + t // 2, x0 + t
        m[y: y + width, x: x + width] = True
    return m


def test_scribble_reference_parity(pair):
    """A scribble within the decoder's point profile: every stroke pixel a click, as SANSA."""
    ref, seg = pair
    ref.clear(), seg.clear()
    rng = np.random.default_rng(21)
    img = _image(rng, 240, 320)
    stroke = _stroke(240, 320, 60, 80, 40)
    assert stroke.sum() == 40 <= seg.stages.axis_max("num_points")
    img2, mask2 = _image(rng, 200, 200), _mask(rng, 200, 200)
    for obj in (ref, seg):
        obj.add_reference(img, scribble=stroke, concept="scr")
        obj.add_reference(img2, mask2, concept="scr")  # a scribble shot and a mask shot of one concept
    target = _image(rng, 211, 389)
    stats = _compare(ref.segment(target), seg.segment(target))
    print(f"scribble of {stroke.sum()} px: IoU {stats['scr'][0]:.5f}, rel L2 {stats['scr'][1]:.1e}")


def test_large_scribble_is_subsampled_and_says_so(pair):
    """More stroke pixels than the profile admits: evenly spaced ones, a warning; IoU vs all pixels reported."""
    ref, seg = pair
    ref.clear(), seg.clear()
    rng = np.random.default_rng(22)
    img = _image(rng, 240, 320)
    stroke = _stroke(240, 320, 40, 40, 200, width=3)
    limit = seg.stages.axis_max("num_points")
    assert stroke.sum() > limit
    ref.add_reference(img, scribble=stroke, concept="scr")
    with pytest.warns(UserWarning, match=rf"{stroke.sum()} stroke pixels.*at most {limit}"):
        seg.add_reference(img, scribble=stroke, concept="scr")
    target = _image(rng, 211, 389)
    a, b = ref.segment(target)["scr"], seg.segment(target)["scr"]
    union = (a.mask | b.mask).sum()
    iou = 1.0 if union == 0 else (a.mask & b.mask).sum() / union
    print(f"scribble of {stroke.sum()} px subsampled to {limit}: IoU vs every pixel {iou:.4f} (random weights)")
    assert b.mask.shape == target.shape[:2]
