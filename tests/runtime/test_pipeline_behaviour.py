"""Reference caching, bad input handling, and engines-folder checks of the runtime."""

import json
import shutil

import numpy as np
import pytest

from runtime import FewShotSegmenter, InputError
from runtime.errors import ModelFolderError


@pytest.fixture
def seg(tiny_engines):
    s = FewShotSegmenter.load(tiny_engines, backend="onnxruntime")
    yield s
    s.close()


def _img(h=120, w=160, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _mask(h=120, w=160):
    m = np.zeros((h, w), bool)
    m[30:80, 40:100] = True
    return m


def test_references_are_encoded_once(seg):
    for i in range(3):
        seg.add_reference(_img(seed=i), _mask(), concept="a")
    seg.add_reference(_img(seed=9), _mask(), concept="b")
    before = seg.stage_calls
    n = 5
    for i in range(n):
        seg.segment(_img(seed=100 + i))
    after = seg.stage_calls
    delta = {k: after[k] - before[k] for k in after}
    # One encoder run per frame, no reference stage re-run, one memory
    # attention + decoder run per concept per frame (one by one: the default on
    # ONNX Runtime's CPU provider; batched calls are tests/runtime/test_batched_objects.py).
    assert seg.objects_per_call == 1
    assert delta == {"image_encoder": n, "memory_encoder": 0,
                     "memory_attention": 2 * n, "mask_decoder": 2 * n}
    assert before["memory_encoder"] == 4


def test_result_shapes_and_timings(seg):
    seg.add_reference(_img(), _mask(), concept="x")
    res = seg.segment(_img(77, 201, seed=3))
    r = res["x"]
    assert r.mask.shape == (77, 201) and r.mask.dtype == np.bool_
    assert r.logits.shape == (77, 201) and r.logits.dtype == np.float32
    assert {"preprocess", "image_encoder", "memory_attention", "mask_decoder",
            "postprocess", "total"} <= set(res.timings)


@pytest.mark.parametrize("image", [
    np.zeros((50, 60), np.uint8),  # grayscale -> replicated
    np.zeros((50, 60, 4), np.uint8),  # RGBA -> alpha dropped
    np.full((50, 60, 3), 0.5, np.float32),  # float in [0, 1] -> used as is
])
def test_documented_conversions(seg, image):
    seg.add_reference(_img(), _mask())
    assert seg.segment(image)["default"].mask.shape == (50, 60)


def test_gray_and_rgba_equal_their_rgb(seg):
    seg.add_reference(_img(), _mask())
    gray = _img(seed=4)[:, :, 0]
    a = seg.segment(gray)["default"].logits
    b = seg.segment(np.repeat(gray[:, :, None], 3, 2))["default"].logits
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("call,match", [
    (lambda s: s.segment(_img()), "before any reference"),
    (lambda s: s.add_reference(_img(), np.zeros((120, 160), bool)), "empty"),
    (lambda s: s.add_reference(_img(), np.ones((120, 160), bool)), "all foreground"),
    (lambda s: s.add_reference(_img(), _mask(100, 160)), "masks must have their image's size"),
    (lambda s: s.add_reference(_img()[:, :, :2], _mask()), "2 channels"),
    (lambda s: s.add_reference(np.full((120, 160, 3), 2.0), _mask()), r"\[0, 1\]"),
    (lambda s: s.add_reference(_img().astype(np.uint16), _mask()), "dtype uint16"),
    (lambda s: s.add_reference(_img(), np.zeros((120, 160, 3), bool)), "one channel"),
    (lambda s: s.add_reference(_img(), points=[(10, 10)], labels=[1, 0]), "one label per point"),
    (lambda s: s.add_reference(_img(), points=[(500, 10)]), "outside"),
    (lambda s: s.add_reference(_img()), "needs a mask"),
    (lambda s: s.add_reference("img.png", _mask()), "NumPy array"),
])
def test_bad_input_is_named_and_segmenter_stays_usable(seg, call, match):
    with pytest.raises(InputError, match=match):
        call(seg)
    seg.add_reference(_img(), _mask())
    assert seg.segment(_img(seed=2))["default"].mask.shape == (120, 160)


def test_missing_file_in_engines_folder(tiny_engines, tmp_path):
    broken = tmp_path / "e"
    shutil.copytree(tiny_engines, broken)
    (broken / "memory_encoder.onnx").unlink()  # a file the CPU session runs (not a cpu-fused stage)
    with pytest.raises(ModelFolderError, match="memory_encoder.onnx.*missing"):
        FewShotSegmenter.load(broken, backend="onnxruntime")


def test_replaced_file_does_not_match_manifest(tiny_engines, tmp_path):
    broken = tmp_path / "e"
    shutil.copytree(tiny_engines, broken)
    shutil.copy(broken / "memory_encoder.onnx", broken / "mask_decoder.onnx")
    with pytest.raises(ModelFolderError, match="does not match the sha256"):
        FewShotSegmenter.load(broken, backend="onnxruntime")


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.update(format_version=99), "format_version"),
    (lambda m: m.update(status="failed"), "status='failed'"),
    (lambda m: m.pop("stages"), "lacks the entries \\['stages'\\]"),
])
def test_manifest_problems(tiny_engines, tmp_path, edit, match):
    broken = tmp_path / "e"
    shutil.copytree(tiny_engines, broken)
    m = json.loads((broken / "manifest.json").read_text())
    edit(m)
    (broken / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelFolderError, match=match):
        FewShotSegmenter.load(broken, backend="onnxruntime")


def test_missing_folder_and_unknown_backend(tiny_engines, tmp_path):
    with pytest.raises(ModelFolderError, match="does not exist"):
        FewShotSegmenter.load(tmp_path / "nope")
    with pytest.raises(ValueError, match="unknown backend"):
        FewShotSegmenter.load(tiny_engines, backend="openvino")


def test_tensorrt_backend_without_engines_says_why(tiny_engines):
    from runtime.errors import BackendUnavailable

    with pytest.raises(BackendUnavailable, match="no TensorRT engines"):
        FewShotSegmenter.load(tiny_engines, backend="tensorrt")


def test_cpu_int8_modes_are_checked(tiny_engines):
    with pytest.raises(ValueError, match="unknown cpu_int8 mode 'yes'"):
        FewShotSegmenter.load(tiny_engines, cpu_int8="yes")
    with pytest.raises(ValueError, match="--cpu-int8-stages"):
        FewShotSegmenter.load(tiny_engines, backend="onnxruntime", cpu_int8="on")


def test_cpu_int8_file_choice():
    from conftest import folder_with
    from runtime.core.backends import onnx_variants

    # reduce_range: safe on every CPU (the weight-range check: tests/runtime/test_cpu_features.py)
    m = folder_with({"a": {"fp32": {}, "cpu-int8": {"reduce_range": True}}, "b": {"fp32": {}}})
    cpu = ["CPUExecutionProvider"]
    assert onnx_variants(m, ("a", "b"), "onnxruntime", "auto", cpu) == {"a": "cpu-int8", "b": "fp32"}
    assert onnx_variants(m, ("a", "b"), "onnxruntime", "off", cpu) == {"a": "fp32", "b": "fp32"}
    # auto: the INT8 graphs are for the CPU provider only
    gpu = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnx_variants(m, ("a", "b"), "onnxruntime", "auto", gpu) == {"a": "fp32", "b": "fp32"}
    assert onnx_variants(m, ("a", "b"), "tensorrt", "auto") == {"a": "fp32", "b": "fp32"}
    with pytest.raises(ValueError, match="needs the onnxruntime backend"):
        onnx_variants(m, ("a", "b"), "tensorrt", "on")
    # FP16 files: run on a GPU provider, not on the CPU one (ONNX Runtime's CPU kernels are FP32)
    m = folder_with({"a": {"fp32": {}, "fp16": {}}, "b": {"fp32": {}}})
    assert onnx_variants(m, ("a", "b"), "onnxruntime", "auto", gpu) == {"a": "fp16", "b": "fp32"}
    assert onnx_variants(m, ("a", "b"), "onnxruntime", "auto", cpu) == {"a": "fp32", "b": "fp32"}


@pytest.mark.parametrize("pipelined", [True, False])
def test_segment_stream_equals_segment(seg, pipelined):
    rng = np.random.default_rng(7)
    frames = [rng.integers(0, 256, (200 + 10 * i, 240, 3), dtype=np.uint8) for i in range(3)]
    seg.clear()
    seg.add_reference(frames[0], np.pad(np.ones((50, 60), bool), ((40, 110), (60, 120))), concept="c")
    one_by_one = [seg.segment(f)["c"].logits for f in frames]
    streamed = list(seg.segment_stream(iter(frames), pipelined=pipelined))
    assert len(streamed) == 3
    for a, r in zip(one_by_one, streamed):
        np.testing.assert_allclose(r["c"].logits, a, rtol=0, atol=1e-5)
        assert r.timings["total"] > 0
    assert list(seg.segment_stream([], pipelined=pipelined)) == []


def test_segment_stream_reports_a_bad_frame(seg):
    seg.clear()
    img = np.zeros((64, 64, 3), np.uint8)
    seg.add_reference(img, np.pad(np.ones((20, 20), bool), 22), concept="c")
    with pytest.raises(InputError, match="image"):
        list(seg.segment_stream([img, np.zeros((64, 64), np.float64) + 5.0]))
