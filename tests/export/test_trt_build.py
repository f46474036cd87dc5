"""The engine builder's parts that need no TensorRT: availability and profile shapes.

Everything that calls into TensorRT is checked against the real bindings of
10.3, 10.16 and 11.4 in ``tests/trt_api/cases_build.py`` (run by
``tests/export/test_tensorrt_api.py``); real engines are built only by
``python -m export.device_check`` on a machine with TensorRT and a GPU.
"""

from __future__ import annotations

import sys
import types

import pytest

from export.trt_build import build_engine, profile_shapes, tensorrt_status
from runtime.core.backends import cuda
from runtime.errors import BackendUnavailable
from runtime.sam2.spec import stage_specs


def test_absent_tensorrt_status_and_build(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    ok, why = tensorrt_status()
    assert not ok and "TensorRT is not importable" in why
    engine = tmp_path / "a.engine"
    with pytest.raises(BackendUnavailable, match="TensorRT is not importable"):
        build_engine(tmp_path / "a.onnx", engine, stage_specs(256)["mask_decoder"])
    assert not engine.exists()


def test_status_without_gpu(monkeypatch):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0"  # all that tensorrt_status reads before asking for a GPU
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(cuda, "device_status", lambda: (False, "no CUDA device found"))
    ok, why = tensorrt_status()
    assert not ok and why == "TensorRT 10.3.0 is installed but no CUDA device found"


def test_profile_shapes_from_spec():
    # embedding side 16, ranges: objects (1,1,8), num_mem (1,7,7), num_ptr (1,16,16)
    specs = stage_specs(256)
    attn = profile_shapes(specs["memory_attention"])
    # vision_feat is static (one frame for all objects)
    assert set(attn) == {"mem_feats", "mem_pos", "mem_valid", "obj_ptrs", "obj_ptr_pos", "ptr_valid"}
    assert attn["mem_feats"] == ((1, 1, 64, 16, 16), (1, 7, 64, 16, 16), (8, 7, 64, 16, 16))
    assert attn["mem_valid"] == ((1, 1), (1, 7), (8, 7))
    assert attn["obj_ptrs"] == ((1, 1, 256), (1, 16, 256), (8, 16, 256))
    dec = profile_shapes(specs["mask_decoder"])
    assert dec["point_coords"] == ((1, 1, 2), (1, 2, 2), (8, 64, 2))  # SANSA: 20 clicks, scribbles up to 64
    assert dec["point_labels"] == ((1, 1), (1, 2), (8, 64))
    assert "has_mask_input" not in dec and "feat_s0" not in dec  # one frame's features for all objects
    custom = stage_specs(256, {"num_mem": (2, 3, 4), "objects": (1, 2, 4)})["memory_attention"]
    assert profile_shapes(custom, input_names=["mem_pos"]) == {
        "mem_pos": ((1, 2, 64, 16, 16), (2, 3, 64, 16, 16), (4, 4, 64, 16, 16))}
    one_memory = profile_shapes(specs["memory_attention"], {"num_mem": (1, 1, 1)})
    assert one_memory["mem_feats"][2] == (8, 1, 64, 16, 16) and one_memory["obj_ptrs"][2] == (8, 16, 256)
