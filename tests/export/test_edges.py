"""The edge graphs, their specs and their folder records.

preprocess (a uint8 frame -> the image encoder's input): the reference is
PyTorch's antialiased bilinear resize, which SANSA's and sam2's image
transforms apply to the frame as float in [0, 1]. video_preprocess: the
reference is sam2's video loader itself (Pillow's bicubic on the JPEG frames
it reads). postprocess (the chosen
low-res logits -> frame-size logits and masks): the reference is PyTorch's
plain bilinear resize, sam2's ``postprocess_masks``, then the threshold.
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from export.edges import check_edge, pil_preprocess_graph, postprocess_graph, preprocess_graph
from export.trt_build import profile_shapes
from runtime.core.compare import EDGE_PARITY
from runtime.core.folder import Manifest, ModelFolder
from runtime.errors import ModelFolderError, UsageError
from runtime.core.edges import pil_frame_taps
from runtime.sam2.inputs import frame_taps, logit_taps, postprocess_feeds, preprocess_feeds, video_preprocess_feeds
from runtime.sam2.spec import (EDGE_STAGES, POSTPROCESS, VIDEO_PREPROCESS, postprocess_spec, preprocess_spec,
                               video_preprocess_spec)
from tests.export.test_build_cli import BASE, run


def _torch_model_input(frame: np.ndarray, size: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255.0
    return F.interpolate(x, (size, size), mode="bilinear", align_corners=False, antialias=True).numpy()


def _rel_l2(a, b) -> float:
    return float(np.linalg.norm((a - b).ravel()) / np.linalg.norm(b.ravel()))


@pytest.mark.parametrize("size", [256, 512])
def test_graph_matches_torch_antialiased_resize(size):
    spec = preprocess_spec(size)
    sess = ort.InferenceSession(preprocess_graph(spec).SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(size)
    # shrink both axes, grow both, one of each, identity, the profile's smallest and largest sides
    for h, w in [(480, 640), (100, 200), (size, 3 * size // 2 + 7), (size, size), (16, 16), (1080, 1920)]:
        frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        got = sess.run(["image"], preprocess_feeds(frame, size))[0]
        ref = _torch_model_input(frame, size)
        assert got.shape == ref.shape == (1, 3, size, size) and got.dtype == np.float32
        assert _rel_l2(got, ref) <= EDGE_PARITY.max_rel_l2, (h, w)


def test_spec_profile_admits_the_taps_of_every_frame_size():
    spec = preprocess_spec(256, max_side=1920)
    shapes = profile_shapes(spec)
    assert set(shapes) == {"frame", "col_idx", "col_w", "row_idx", "row_w"}
    assert shapes["frame"] == ((16, 16, 3), (1080, 1920, 3), (1920, 1920, 3))
    k_max = shapes["col_idx"][2][1]
    widest = max(frame_taps(16, n, 256)["col_idx"].shape[1] for n in range(16, 1921, 7))
    assert frame_taps(16, 1920, 256)["col_idx"].shape[1] <= k_max and widest <= k_max
    assert k_max - widest <= 2  # the bound is tight: TensorRT sizes the gathers for it
    small = preprocess_spec(1024, max_side=640).axis_ranges
    assert small["frame_h"] == (16, 640, 640) and small["frame_w"] == (16, 640, 640)
    with pytest.raises(UsageError, match="integer >= 16"):
        preprocess_spec(256, max_side=8)


def test_taps_are_cached_and_read_only():
    a, b = frame_taps(480, 640, 256), frame_taps(480, 640, 256)
    assert a is b and a["col_idx"].dtype == np.int32 and a["row_w"].dtype == np.float32
    with pytest.raises(ValueError):
        a["col_w"][0, 0] = 1.0


def test_a_wrong_graph_fails_its_parity_check():
    spec = preprocess_spec(256)
    model = preprocess_graph(spec)
    inv = next(t for t in model.graph.initializer if t.name == "inv255")
    inv.float_data[0] = 1.0 / 254.0  # 0.4 % off: far above the gate
    report = check_edge(spec, model.SerializeToString(), "image-predictor")
    assert not report["passed"] and report["rel_l2"] > 1e-3


def test_video_graph_is_sam2s_video_loader(tmp_path):
    """The video preprocess graph (ONNX Runtime) vs ``load_video_frames_from_jpg_images`` (mean 0,
    std 1: the resized frame / 255) on the JPEG frames it reads: bit for bit, landscape, portrait
    (Pillow 13 resizes those vertical pass first), growing and mixed frames."""
    import torch
    from PIL import Image
    from sam2.utils.misc import load_video_frames_from_jpg_images

    from tests.pillow_order import FITTED

    spec = video_preprocess_spec(256)
    sess = ort.InferenceSession(pil_preprocess_graph(spec).SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    for h, w in [(480, 640), (640, 360), (200, 150), (120, 700), (256, 256)]:
        folder = tmp_path / f"{h}x{w}"
        folder.mkdir()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / "00000.jpg", quality=90)
        frame = np.array(Image.open(folder / "00000.jpg").convert("RGB"))
        feeds = video_preprocess_feeds(frame, 256)
        got = sess.run(["image"], feeds)[0]
        if feeds["vertical_first"][0] and not FITTED:
            continue  # this Pillow may run another order (tests/pillow_order.py)
        ref = load_video_frames_from_jpg_images(str(folder), 256, True, img_mean=(0, 0, 0), img_std=(1, 1, 1),
                                                compute_device=torch.device("cpu"))[0]
        np.testing.assert_array_equal(got, ref.numpy(), err_msg=f"{h}x{w}")
    assert pil_frame_taps(640, 360, 256, "bicubic")["vertical_first"][0] and not pil_frame_taps(480, 640, 256, "bicubic")["vertical_first"][0]


def test_video_spec_profile_admits_pillows_taps():
    spec = video_preprocess_spec(256, max_side=1920)
    shapes = profile_shapes(spec)
    k_max = shapes["col_idx"][2][1]
    widest = max(pil_frame_taps(16, n, 256, "bicubic")["col_idx"].shape[1] for n in range(16, 1921, 7))
    assert pil_frame_taps(16, 1920, 256, "bicubic")["col_idx"].shape[1] == k_max >= widest  # tight: Pillow's own count
    assert shapes["col_idx"][0] == (256, 5) and "vertical_first" not in shapes  # static
    assert {spec.input(n).dtype for n in ("col_idx", "col_w", "row_idx", "row_w")} == {"int32"}


def test_a_wrong_video_graph_fails_its_parity_check():
    spec = video_preprocess_spec(256)
    model = pil_preprocess_graph(spec)
    half = next(t for t in model.graph.initializer if t.name == "half")
    half.int32_data[0] = 0  # Pillow's rounding dropped: levels 1 lower on about half the pixels
    report = check_edge(spec, model.SerializeToString(), "video-loader")
    assert not report["passed"] and report["rel_l2"] > 1e-3


def _torch_logits_to_frame(low: np.ndarray, hw) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    return F.interpolate(torch.from_numpy(low)[:, None], hw, mode="bilinear", align_corners=False)[:, 0].numpy()


@pytest.mark.parametrize("size", [256, 1024])
def test_postprocess_graph_matches_torch_bilinear_and_thresholds(size):
    spec = postprocess_spec(size)
    sess = ort.InferenceSession(postprocess_graph(spec).SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(size)
    low = size // 4
    # grow both axes, shrink both, one of each, the profile's ends; 1, 3 and the most objects
    for (h, w), n in [((480, 640), 1), ((1080, 1920), 3), ((50, 40), 2), ((100, 2 * size), 8), ((16, 16), 1),
                      ((1920, 1920), 1)]:
        x = (rng.standard_normal((n, low, low)) * 8).astype(np.float32)
        thr = float(rng.uniform(-2, 2))
        logits, mask = sess.run(["logits", "mask"], postprocess_feeds(x, (h, w), thr))
        ref = _torch_logits_to_frame(x, (h, w))
        assert logits.shape == mask.shape == (n, h, w) and logits.dtype == np.float32 and mask.dtype == np.bool_
        assert _rel_l2(logits, ref) <= EDGE_PARITY.max_rel_l2, (h, w)
        assert (mask == (logits > np.float32(thr))).all()
        near = np.abs(ref - thr) < 1e-4  # where a rounding may put a pixel on the other side
        assert (mask == (ref > thr))[~near].all(), (h, w)


def test_logit_taps_are_torchs_weights_to_the_last_bit():
    """torch computes each source coordinate as one fused multiply-add; the taps round as it does."""
    import torch
    import torch.nn.functional as F

    for n_in, n_out in [(64, 640), (256, 1920), (256, 1080), (256, 720), (64, 50), (256, 1023)]:
        taps = logit_taps(16, n_out, n_in)
        idx, w = taps["col_idx"], taps["col_w"]
        eye = torch.eye(n_in)[None, :, None, :]  # each source pixel alone: its weight in every output
        got = F.interpolate(eye, (1, n_out), mode="bilinear", align_corners=False)[0, :, 0, :].numpy()
        cols = np.arange(n_out)
        w1 = np.where(idx[:, 1] != idx[:, 0], got[idx[:, 1], cols], w[:, 1])
        assert (w1 == w[:, 1]).all(), (n_in, n_out)


def test_postprocess_spec_and_profile():
    spec = postprocess_spec(512, max_side=1280, objects=(1, 1, 4))
    shapes = profile_shapes(spec)
    assert shapes["low_res"] == ((1, 128, 128), (1, 128, 128), (4, 128, 128))
    assert shapes["col_idx"] == ((16, 2), (1280, 2), (1280, 2)) and "threshold" not in shapes  # static
    assert spec.output("mask").dtype == "bool" and spec.output("logits").shape == ("objects", "frame_h", "frame_w")
    with pytest.raises(UsageError, match="integer >= 16"):
        postprocess_spec(256, max_side=4)


def test_a_wrong_postprocess_graph_fails_its_parity_check():
    spec = postprocess_spec(256)
    model = postprocess_graph(spec)
    for n in model.graph.node:
        if n.op_type == "Greater":
            n.op_type = "Less"  # the masks inverted, the logits right
    report = check_edge(spec, model.SerializeToString(), "logits")
    assert not report["passed"] and report["rel_l2"] <= 1e-6 and report["mask_iou"] < 0.5


def test_folder_records_the_edge_stages(tiny_engines):
    folder = ModelFolder.open(tiny_engines)
    m = folder.manifest
    fewshot = tuple(e for e in EDGE_STAGES if e != VIDEO_PREPROCESS)  # the video graph is for tracking folders
    assert tuple(m.edge_specs) == fewshot and not set(EDGE_STAGES) & set(m.specs)
    assert list(folder.runnable_specs) == [*m.specs, *fewshot]
    assert m.edge_specs[POSTPROCESS].axis_ranges["objects"] == m.specs["mask_decoder"].axis_ranges["objects"]
    for stage in fewshot:
        rec = folder.stage(stage)
        assert set(rec.files) == {"fp32"} and rec.precision == "fp32"
        assert rec.parity["passed"] and rec.parity["rel_l2"] <= 1e-6
        assert {tuple(c["frame"]) for c in rec.parity["cases"]} >= {(480, 640), (720, 1280), (1080, 1920)}
        assert (tiny_engines / rec.files["fp32"].file).is_file()
        assert folder.read_verified(rec.files["fp32"])  # its sha256 as recorded
    assert folder.stage(POSTPROCESS).parity["mask_iou"] == 1.0


def test_manifests_without_edge_stages_still_load(tiny_engines):
    d = json.loads((tiny_engines / "manifest.json").read_text())
    del d["edge_specs"], d["edge_stages"]  # as export.build wrote folders before the preprocess graph
    old = Manifest.from_dict(d)
    assert old.edge_specs == {} and old.edge_stages == {}
    d = json.loads((tiny_engines / "manifest.json").read_text())
    del d["edge_stages"]
    with pytest.raises(ModelFolderError, match="edge stages"):
        Manifest.from_dict(d)


def test_build_refuses_a_bad_frame_side(tmp_path, capsys):
    code, err = run([*BASE, "--random-weights", "--max-frame-side", "8", "--out", str(tmp_path / "f")], capsys)
    assert code != 0 and "frame side" in err and "16" in err
    assert not (tmp_path / "f").exists()
    code, err = run(["--model", "features", "--precision", "fp32", "--random-weights", "--skip-tensorrt",
                     "--max-frame-side", "1280", "--out", str(tmp_path / "d")], capsys)
    assert code != 0 and "--max-frame-side" in err and "does not apply" in err  # no edge graph there
    assert not (tmp_path / "d").exists()
