"""``python -m export.device_check``: its no-GPU exit here, its comparisons, and (marked) the real run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from export import device_check
from export.trt_build import tensorrt_status
from tests.real_packages import ROOT

_OK, _WHY = tensorrt_status()


@pytest.mark.skipif(_OK, reason="this machine has TensorRT and a GPU: the real check runs below")
def test_without_tensorrt_or_gpu_it_says_so_and_exits_4(tmp_path):
    r = subprocess.run([sys.executable, "-m", "export.device_check", "--out", str(tmp_path / "out")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == device_check.NO_DEVICE == 4
    assert "device check not run: it needs TensorRT and a CUDA GPU here" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()


def test_bad_precision_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        device_check.main(["--precisions", "fp64"])
    assert e.value.code == 2 and "unknown precision(s) ['fp64']" in capsys.readouterr().err


def test_comparison_of_a_backend_with_itself_is_exact(tiny_engines):
    """The comparison glue on ONNX Runtime against itself: every stage fed, IoU 1, rel L2 0."""
    r = device_check.check_folder(tiny_engines, "fp32", lambda m: None, backend="onnxruntime",
                                  edge_mode="backend")
    assert r["failures"] == [] and set(r["stages"]) == {"image_encoder", "memory_encoder", "memory_attention",
                                                         "mask_decoder", "preprocess", "postprocess"}
    assert all(s["rel_l2"] == 0 and s["samples"] > 0 for s in r["stages"].values())
    host = device_check.check_folder(tiny_engines, "fp32", lambda m: None, backend="onnxruntime")
    assert host["failures"] == [] and all(host["stages"][e] == {"engine": None, "host": "no engine"}
                                          for e in ("preprocess", "postprocess"))
    p = r["products"]["FewShotSegmenter"]
    assert p["mean_iou"] == p["worst_iou"] == 1.0 and p["masks"] == 6 and 0 < p["fp32_foreground"] < 1
    json.dumps(r)


def test_edge_gates_hold_values_exact_and_let_masks_flip_at_the_threshold(tiny_engines):
    from runtime.core.folder import ModelFolder

    spec = ModelFolder.open(tiny_engines).manifest.edge_specs["postprocess"]
    exact = {"rel_l2": 0.0, "max_abs": 0.0, "cosine": 1.0}
    off = {"rel_l2": 3e-3, "max_abs": 1.0, "cosine": 0.99999}
    assert device_check.edge_failures(spec, {"outputs": {"logits": exact, "mask": off}}) == []
    assert device_check.edge_failures(spec, {"outputs": {"logits": off, "mask": exact}})[0].startswith("logits: rel L2")
    assert device_check.edge_failures(spec, {"outputs": {"logits": exact, "mask": {**off, "rel_l2": 0.1}}})


def test_stock_workload_runs_and_sees_objects(stock_sam2_factory):
    _, _, folder = stock_sam2_factory("2.1")
    r = device_check.check_folder(folder, "fp16", lambda m: None, backend="onnxruntime", edge_mode="backend")
    p = r["products"]["ImagePredictor + VideoTracker"]
    assert r["failures"] == [] and p["masks"] == 6 * 3 + 8 and p["worst_iou"] == 1.0 and p["fp32_foreground"] > 0


def test_tracker_memory_growth_reads_the_device_between_the_middle_and_the_end(stock_sam2_factory, monkeypatch):
    """The glue on ONNX Runtime, with the CUDA query on the fake: the tracker runs the whole clip, and
    the growth is what cudaMemGetInfo says between the two frames (a buffer held from frame 12 on)."""
    from runtime.core.backends import cuda
    from runtime.core.session import EngineSession
    from runtime.sam2.tracker import VideoTracker
    from tests.cuda_fake import FakeCudart

    _, _, folder = stock_sam2_factory("2.1")
    rt = FakeCudart()
    monkeypatch.setattr(cuda, "_CUDART", rt)
    leaked = []
    track = VideoTracker.track_frame

    def leaky(self, frame_idx, image, num_frames=None):  # a frame's upload held past the frame
        if frame_idx >= 12:
            leaked.append(cuda.DeviceBuffer(1 << 20))
        return track(self, frame_idx, image, num_frames)

    with EngineSession.open(folder, backend="onnxruntime", product="VideoTracker") as session:
        assert device_check.tracker_memory_growth(session, frames=24)["growth_mib"] == 0
        monkeypatch.setattr(VideoTracker, "track_frame", leaky)
        grown = device_check.tracker_memory_growth(session, frames=24)
    assert grown == {"frames": 24, "from_frame": 12, "growth_mib": 12.0}  # frames 13..24, 1 MiB each


@pytest.mark.tensorrt
@pytest.mark.skipif(not _OK, reason=f"needs TensorRT and a CUDA GPU: {_WHY}")
def test_real_engines_pass_the_device_check(tmp_path):
    r = subprocess.run([sys.executable, "-m", "export.device_check", "--out", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    print(r.stdout[-8000:], r.stderr[-4000:])
    assert r.returncode == 0
    report = json.loads((tmp_path / "device-check.json").read_text())
    assert report["failures"] == [] and len(report["checks"]) == 5
