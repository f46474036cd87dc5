"""The preprocess graph (a uint8 frame -> the image encoder's input), its spec and its folder record.

The reference is PyTorch's antialiased bilinear resize, which SANSA's and
sam2's image transforms apply to the frame as float in [0, 1].
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from export.preprocess import check_preprocess, preprocess_graph
from export.trt_build import profile_shapes
from runtime.core.compare import MODEL_INPUT_PARITY
from runtime.core.folder import Manifest, ModelFolder
from runtime.errors import ModelFolderError, UsageError
from runtime.sam2.inputs import frame_taps, preprocess_feeds
from runtime.sam2.spec import PREPROCESS, preprocess_spec
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
        assert _rel_l2(got, ref) <= MODEL_INPUT_PARITY.max_rel_l2, (h, w)


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
    report = check_preprocess(spec, model.SerializeToString())
    assert not report["passed"] and report["rel_l2"] > 1e-3


def test_folder_records_the_preprocess_stage(tiny_engines):
    folder = ModelFolder.open(tiny_engines)
    m = folder.manifest
    assert list(m.edge_specs) == [PREPROCESS] and PREPROCESS not in m.specs
    assert list(folder.runnable_specs) == [*m.specs, PREPROCESS]
    rec = folder.stage(PREPROCESS)
    assert set(rec.files) == {"fp32"} and rec.precision == "fp32"
    assert rec.parity["passed"] and rec.parity["rel_l2"] <= 1e-6
    assert {tuple(c["frame"]) for c in rec.parity["cases"]} >= {(480, 640), (720, 1280), (1080, 1920)}
    assert (tiny_engines / rec.files["fp32"].file).is_file()
    assert folder.read_verified(rec.files["fp32"])  # its sha256 as recorded


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
    code, err = run(["--model", "sam2-unet", "--precision", "fp32", "--random-weights", "--skip-tensorrt",
                     "--max-frame-side", "1280", "--out", str(tmp_path / "d")], capsys)
    assert code != 0 and "--max-frame-side" in err and "does not apply" in err
