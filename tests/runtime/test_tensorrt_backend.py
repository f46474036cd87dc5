"""The TensorRT backend's pure parts and its behaviour where TensorRT or a GPU is missing.

What calls into TensorRT is checked against the real bindings of each
supported version in ``tests/trt_api`` (run by ``tests/export/test_tensorrt_api.py``);
the ``tensorrt`` module used here is a bare module with only ``__version__``,
which is all :func:`load_tensorrt` reads. Real engines run only in
``python -m export.device_check`` on a machine with TensorRT and a GPU.
"""

from __future__ import annotations

import sys
import types
import warnings

import pytest

from conftest import folder_with
from runtime.core.backends import cuda, resolve_backend
from runtime.core.backends import tensorrt as trt_backend
from runtime.core.backends.cuda import CudaError, cuda_call
from runtime.core.backends.tensorrt import choose_profile, why_not_runnable
from runtime.core.folder import EngineRecord, engine_usable_here
from runtime.core.spec import TensorContractError
from runtime.errors import BackendUnavailable, ModelFolderError
from runtime.sam2.spec import stage_specs
from tests.cuda_fake import FakeCudart

GPU = {"name": "FakeGPU", "compute_capability": "8.7"}


def tensorrt_module(version: str) -> types.ModuleType:
    mod = types.ModuleType("tensorrt")
    mod.__version__ = version
    return mod


def engine_record(version="10.3.0", gpu=GPU, file="toy.fp32.engine"):
    return EngineRecord(file, "0" * 64, "fp32", "fp32", "1" * 64, version, dict(gpu))


# the version window --------------------------------------------------------------------
def test_tensorrt_absent_gives_clear_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(BackendUnavailable) as e:
        trt_backend.load_tensorrt()
    msg = str(e.value)
    assert "TensorRT is not importable" in msg and "JetPack 6" in msg and ".[tensorrt-cu13]" in msg


@pytest.mark.parametrize("version,ok", [("8.5.2.2", False), ("8.6.1", False), ("10.0.1", True), ("10.3.0", True),
                                        ("10.16.1.11", True), ("11.4.0.106", True), ("12.0.0", False)])
def test_version_window(monkeypatch, version, ok):
    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt_module(version))
    if ok:
        assert trt_backend.load_tensorrt().__version__ == version
        return
    with pytest.raises(BackendUnavailable) as e:
        trt_backend.load_tensorrt()
    msg = str(e.value)
    assert version in msg and "onnxruntime backend" in msg
    if version.startswith("8."):
        assert "too old" in msg and ">= 10.0" in msg and "JetPack 6" in msg
    else:
        assert "newer than this project supports" in msg and "tensorrt-cu13" in msg


# cuda-python without a GPU -----------------------------------------------------------------
def test_cuda_python_absent_gives_clear_message(monkeypatch):
    monkeypatch.setattr(cuda, "_CUDART", None)
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
    ok, why = cuda.device_status()
    assert not ok and "cuda-python is not importable" in why and "pip install" in why
    with pytest.raises(BackendUnavailable, match="cuda-python"):
        cuda.require_device()


def test_no_gpu_is_reported(monkeypatch):
    monkeypatch.setattr(cuda, "_CUDART", FakeCudart(devices=0))
    ok, why = cuda.device_status()
    assert not ok and "cudaErrorNoDevice" in why


def test_a_driver_that_cannot_load_is_a_reason_not_a_crash(monkeypatch):
    """cuda-python 12.2 raises from cudaGetDeviceCount where libcuda.so.1 is missing (checked for real
    against 12.2, 12.9 and 13.0 in tests/export/test_tensorrt_api.py)."""
    rt = FakeCudart()

    def raises():
        raise RuntimeError("Failed to dlopen libcuda.so.1")

    rt.cudaGetDeviceCount = raises
    monkeypatch.setattr(cuda, "_CUDART", rt)
    ok, why = cuda.device_status()
    assert not ok and "Failed to dlopen libcuda.so.1" in why and "driver" in why


def test_cuda_call_unpacks_and_raises(monkeypatch):
    monkeypatch.setattr(cuda, "_CUDART", FakeCudart())
    assert cuda_call((0, 5)) == 5
    assert cuda_call((0,)) is None
    assert cuda_call((0, 1, 2)) == (1, 2)
    with pytest.raises(CudaError, match="cudaErrorNoDevice"):
        cuda_call((100, None))


def test_device_name_and_record(monkeypatch):
    monkeypatch.setattr(cuda, "_CUDART", FakeCudart())
    assert cuda.device_name() == "FakeGPU"
    assert cuda.gpu_record() == GPU


# pure helpers ------------------------------------------------------------------------------
def test_choose_profile_single_and_buckets():
    mem = lambda lo, hi: ((lo, 64, 8, 8), (hi, 64, 8, 8), (hi, 64, 8, 8))
    one = [{"mem_feats": mem(1, 7)}]
    assert choose_profile(one, {"mem_feats": (3, 64, 8, 8)}) == 0
    buckets = [{"mem_feats": mem(1, 3)}, {"mem_feats": mem(4, 7)}]
    assert choose_profile(buckets, {"mem_feats": (2, 64, 8, 8)}) == 0
    assert choose_profile(buckets, {"mem_feats": (5, 64, 8, 8)}) == 1
    overlap = [{"mem_feats": mem(1, 7)}, {"mem_feats": mem(1, 3)}]  # the tightest fitting profile wins
    assert choose_profile(overlap, {"mem_feats": (2, 64, 8, 8)}) == 1
    assert choose_profile(overlap, {"mem_feats": (6, 64, 8, 8)}) == 0
    assert choose_profile(one, {"mem_feats": (1, 64, 8, 8), "other": (9,)}) == 0  # unconstrained inputs ignored


def test_choose_profile_none_fits_names_ranges():
    buckets = [{"m": ((1, 4), (3, 4), (3, 4))}, {"m": ((4, 4), (7, 4), (7, 4))}]
    with pytest.raises(ValueError) as e:
        choose_profile(buckets, {"m": (8, 4)})
    msg = str(e.value)
    assert "profile 0" in msg and "profile 1" in msg and "max (7, 4)" in msg and "(8, 4)" in msg
    with pytest.raises(ValueError):  # rank mismatch never fits
        choose_profile(buckets, {"m": (2, 4, 1)})


def test_check_feeds_against_spec():
    spec = stage_specs(256)["memory_attention"]  # embedding side 16
    good = {"vision_feat": (1, 256, 16, 16), "mem_feats": (2, 3, 64, 16, 16), "mem_pos": (2, 3, 64, 16, 16),
            "mem_valid": (2, 3), "obj_ptrs": (2, 5, 256), "obj_ptr_pos": (2, 5, 64), "ptr_valid": (2, 5)}
    good = {k: (v, "float32") for k, v in good.items()}
    assert spec.check_feeds(good) == {"objects": 2, "num_mem": 3, "num_ptr": 5}
    with pytest.raises(TensorContractError, match="axis 3 is 32, must be 16"):
        spec.check_feeds({**good, "mem_feats": ((2, 3, 64, 32, 16), "float32")})
    with pytest.raises(TensorContractError, match="rank 4 instead of 5"):
        spec.check_feeds({**good, "mem_pos": ((2, 3, 64, 16), "float32")})
    with pytest.raises(TensorContractError, match="num_mem=2 here but num_mem=3 in input 'mem_feats'"):
        spec.check_feeds({**good, "mem_pos": ((2, 2, 64, 16, 16), "float32")})
    with pytest.raises(ValueError, match=r"num_mem=8 is outside the range 1\.\.7"):
        spec.check_feeds({**good, "mem_feats": ((2, 8, 64, 16, 16), "float32"),
                          "mem_pos": ((2, 8, 64, 16, 16), "float32"), "mem_valid": ((2, 8), "float32")})
    with pytest.raises(TensorContractError, match="'obj_ptrs' is float64, the stage takes float32"):
        spec.check_feeds({**good, "obj_ptrs": ((2, 5, 256), "float64")})


def test_engine_usable_here():
    rec = engine_record("10.3.0")
    assert engine_usable_here(rec, "10.3.0", GPU) is None
    assert "TensorRT 8.6.2" in engine_usable_here(engine_record("8.6.2"), "10.3.0", GPU)
    assert "not portable across GPUs" in engine_usable_here(rec, "10.3.0", {"name": "Orin", "compute_capability": "8.7"})
    assert "not portable across GPUs" in engine_usable_here(rec, "10.3.0", {"name": "FakeGPU", "compute_capability": "9.0"})
    with pytest.raises(ModelFolderError, match="lacks"):
        EngineRecord.from_dict({"file": "a.engine"})


# backend "auto" --------------------------------------------------------------------------------
STAGES = ("image_encoder", "mask_decoder")


def folder(engines: bool, gpu=GPU, version="10.3.0"):
    f = folder_with({s: {"fp32": {}} for s in STAGES})
    f.manifest.tensorrt = {"built": engines, "reason": "TensorRT is not importable here"}
    if engines:
        for s in STAGES:
            f.stage(s).engine = engine_record(version, gpu, f"{s}.fp32.engine")
    return f


@pytest.fixture
def machine(monkeypatch):
    """This machine: TensorRT 10.3.0 (version only) and one FakeGPU."""
    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt_module("10.3.0"))
    monkeypatch.setattr(cuda, "_CUDART", FakeCudart())
    import runtime.core.backends as backends

    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda name: object())
    return monkeypatch


def test_auto_runs_tensorrt_only_where_it_can(machine):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_backend("auto", folder(True), STAGES) == "tensorrt"
    cases = [
        (folder(False), "no TensorRT engines for ['image_encoder', 'mask_decoder']"),
        (folder(True, version="10.16.1.11"), "built with TensorRT 10.16.1.11, this machine has TensorRT 10.3.0"),
        (folder(True, gpu={"name": "Orin", "compute_capability": "8.7"}), "not portable across GPUs"),
    ]
    for f, why in cases:
        with pytest.warns(RuntimeWarning, match="backend 'auto' runs ONNX Runtime") as w:
            assert resolve_backend("auto", f, STAGES) == "onnxruntime"
        assert why in str(w[0].message)
    machine.setattr(cuda, "_CUDART", FakeCudart(devices=0))
    with pytest.warns(RuntimeWarning, match="cudaErrorNoDevice"):
        assert resolve_backend("auto", folder(True), STAGES) == "onnxruntime"
    machine.setitem(sys.modules, "tensorrt", tensorrt_module("8.6.1"))
    with pytest.warns(RuntimeWarning, match="TensorRT 8.6.1 is too old"):
        assert resolve_backend("auto", folder(True), STAGES) == "onnxruntime"


def test_auto_is_silent_where_nothing_suggests_tensorrt(monkeypatch):
    import runtime.core.backends as backends

    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda name: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_backend("auto", folder(False), STAGES) == "onnxruntime"


def test_why_not_runnable_names_the_first_obstacle(machine):
    assert why_not_runnable(folder(True), STAGES) is None
    why = why_not_runnable(folder(True, version="11.4.0.106"), STAGES)
    assert "TensorRT 11.4.0.106" in why and "rebuild with `python -m export.build` on this device" in why
