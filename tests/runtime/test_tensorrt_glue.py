"""The TensorRT runner's glue, tested with fake ``tensorrt`` and cuda-python modules.

The fakes model only what the runner relies on: "device" memory is host memory
(so copies are memmoves and the fake engine computes ``z = x + 2*y`` by reading
the bound addresses), tensors are bound by name, and ``set_input_shape``
refuses shapes outside the active profile as TensorRT does. Nothing here says
TensorRT itself works: the tests marked ``tensorrt`` do, on a machine with
TensorRT and a GPU, and are skipped elsewhere with the reason.
"""

from __future__ import annotations

import ctypes
import json
import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import tiny_layernorm_onnx

from runtime.core.backends import cuda
from runtime.core.backends import tensorrt as trt_backend
from runtime.core.backends.cuda import CudaError, DeviceTensor, cuda_call
from runtime.core.backends.tensorrt import TensorRTStageRunner, choose_profile
from runtime.core.folder import EngineRecord, engine_usable_here
from runtime.core.spec import StageSpec, TensorContractError, TensorSpec
from runtime.errors import BackendUnavailable, EngineIncompatible, ModelFolderError
from runtime.sam2.spec import stage_specs

GPU = {"name": "FakeGPU", "compute_capability": "8.7"}
TRT_VERSION = "10.3.0"


# fakes ----------------------------------------------------------------------------
class FakeCudart:
    """cuda-python's runtime API over host memory; counts allocations."""

    class cudaMemcpyKind:
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2
        cudaMemcpyDeviceToDevice = 3

    def __init__(self, devices=1):
        self.devices = devices
        self.device_mem, self.pinned_mem = {}, {}
        self.mallocs = 0
        self.copies = []

    def _alloc(self, table, n):
        block = np.zeros(n, np.uint8)
        table[block.ctypes.data] = block
        return block.ctypes.data

    def cudaGetDeviceCount(self):
        return (0, self.devices) if self.devices else (100, 0)  # 100 = cudaErrorNoDevice

    def cudaGetDevice(self):
        return (0, 0)

    def cudaGetDeviceProperties(self, device):
        return (0, SimpleNamespace(name=b"FakeGPU\0\0\0", major=8, minor=7))

    def cudaGetErrorName(self, err):
        return (0, b"cudaErrorNoDevice" if int(err) == 100 else b"cudaErrorFake")

    def cudaGetErrorString(self, err):
        return (0, b"fake error")

    def cudaMalloc(self, n):
        self.mallocs += 1
        return (0, self._alloc(self.device_mem, n))

    def cudaFree(self, ptr):
        del self.device_mem[ptr]
        return (0,)

    def cudaMallocHost(self, n):
        return (0, self._alloc(self.pinned_mem, n))

    def cudaFreeHost(self, ptr):
        del self.pinned_mem[ptr]
        return (0,)

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        self.copies.append((int(kind), n))
        ctypes.memmove(dst, src, n)
        return (0,)

    def cudaStreamCreate(self):
        return (0, 7)

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaStreamDestroy(self, stream):
        return (0,)

    def cudaEventCreate(self):
        return (0, 9)

    def cudaEventRecord(self, event, stream):
        return (0,)

    def cudaEventSynchronize(self, event):
        return (0,)

    def cudaEventDestroy(self, event):
        return (0,)


def _read(ptr, shape):
    n = int(np.prod(shape))
    return np.ctypeslib.as_array((ctypes.c_float * max(n, 1)).from_address(ptr))[:n].reshape(shape)


class FakeContext:
    def __init__(self, engine):
        self.engine, self.profile = engine, 0
        self.shapes, self.addresses, self.profile_calls = {}, {}, []

    def set_optimization_profile_async(self, index, stream):
        self.profile_calls.append(index)
        self.profile = index
        self.shapes.clear()
        return True

    def set_input_shape(self, name, shape):
        lo, _, hi = self.engine.cfg["profiles"][self.profile][name]
        if not all(a <= s <= b for s, a, b in zip(shape, lo, hi)):
            return False  # TensorRT refuses shapes outside the active profile
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        if name in self.engine.cfg["outputs"]:
            return self.shapes.get("x", tuple(self.engine.cfg["outputs"][name]))
        return self.shapes.get(name, tuple(self.engine.cfg["inputs"][name]))

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream):
        shape = self.shapes["x"]
        x, y = _read(self.addresses["x"], shape), _read(self.addresses["y"], shape)
        _read(self.addresses["z"], shape)[...] = x + 2 * y
        self.engine.runs += 1
        return True


class FakeEngine:
    def __init__(self, cfg):
        self.cfg, self.runs, self.contexts = cfg, 0, []
        self.order = cfg["order"]
        self.num_io_tensors = len(self.order)
        self.num_optimization_profiles = len(cfg["profiles"])

    def get_tensor_name(self, i):
        return self.order[i]

    def get_tensor_mode(self, name):
        return "INPUT" if name in self.cfg["inputs"] else "OUTPUT"

    def get_tensor_dtype(self, name):
        return "float32"

    def get_tensor_shape(self, name):
        return tuple(self.cfg["inputs"].get(name) or self.cfg["outputs"][name])

    def get_tensor_profile_shape(self, name, p):
        return [tuple(s) for s in self.cfg["profiles"][p][name]]

    def create_execution_context(self):
        self.contexts.append(FakeContext(self))
        return self.contexts[-1]


def make_fake_trt(version=TRT_VERSION):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.engines = []

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            trt.engines.append(FakeEngine(json.loads(data)))
            return trt.engines[-1]

    trt.Logger, trt.Runtime = Logger, Runtime
    trt.TensorIOMode = SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    trt.nptype = lambda dt: np.dtype(dt).type
    return trt


TOY = StageSpec(
    "toy",
    inputs=(TensorSpec("x", ("batch", 2, 3)), TensorSpec("y", ("batch", 2, 3))),
    outputs=(TensorSpec("z", ("batch", 2, 3)),),
    axis_ranges={"batch": (1, 2, 4)},
)


def engine_cfg(profiles=((1, 2, 4),)):
    """Engine I/O deliberately in another order than the spec: binding is by name."""
    prof = [{n: [[lo, 2, 3], [opt, 2, 3], [hi, 2, 3]] for n in ("x", "y")} for lo, opt, hi in profiles]
    return {"order": ["z", "y", "x"], "inputs": {"x": [-1, 2, 3], "y": [-1, 2, 3]},
            "outputs": {"z": [-1, 2, 3]}, "profiles": prof}


@pytest.fixture
def fakes(monkeypatch):
    rt = FakeCudart()
    trt = make_fake_trt()
    monkeypatch.setattr(cuda, "_CUDART", rt)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return SimpleNamespace(cudart=rt, trt=trt)


def engine_record(version=TRT_VERSION, gpu=GPU):
    return EngineRecord("toy.engine", "0" * 64, "fp32", "fp32", "1" * 64, version, dict(gpu))


def make_runner(tmp_path, cfg=None, record=None, spec=TOY, **kw):
    path = tmp_path / "toy.engine"
    path.write_text(json.dumps(cfg or engine_cfg()))
    return TensorRTStageRunner(spec, path.read_bytes(), record or engine_record(), **kw)


def feeds(batch, seed=0):
    rng = np.random.default_rng(seed)
    return {"y": rng.standard_normal((batch, 2, 3)).astype(np.float32),
            "x": rng.standard_normal((batch, 2, 3)).astype(np.float32)}


# absent libraries -------------------------------------------------------------------
def test_tensorrt_absent_gives_clear_message(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(BackendUnavailable) as e:
        trt_backend.load_tensorrt()
    msg = str(e.value)
    assert "TensorRT is not importable" in msg and "pip install tensorrt" in msg and "JetPack" in msg
    with pytest.raises(BackendUnavailable, match="TensorRT is not importable"):
        make_runner(tmp_path).activate()


def test_too_old_tensorrt_is_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt(version="8.4.3.1"))
    with pytest.raises(BackendUnavailable, match="TensorRT 8.4.3.1 is too old"):
        trt_backend.load_tensorrt()


def test_cuda_python_absent_gives_clear_message(monkeypatch):
    monkeypatch.setattr(cuda, "_CUDART", None)
    monkeypatch.setitem(sys.modules, "cuda", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    ok, why = cuda.device_status()
    assert not ok and "cuda-python is not importable" in why and "pip install" in why
    with pytest.raises(BackendUnavailable, match="cuda-python"):
        cuda.require_device()


def test_no_gpu_is_reported(monkeypatch):
    monkeypatch.setattr(cuda, "_CUDART", FakeCudart(devices=0))
    ok, why = cuda.device_status()
    assert not ok and "cudaErrorNoDevice" in why


def test_cuda_call_unpacks_and_raises(monkeypatch):
    monkeypatch.setattr(cuda, "_CUDART", FakeCudart())
    assert cuda_call((0, 5)) == 5
    assert cuda_call((0,)) is None
    assert cuda_call((0, 1, 2)) == (1, 2)
    with pytest.raises(CudaError, match="cudaErrorNoDevice"):
        cuda_call((100, None))


def test_device_name_and_record(fakes):
    assert cuda.device_name() == "FakeGPU"
    assert cuda.gpu_record() == GPU


# pure helpers -------------------------------------------------------------------------
def test_choose_profile_single_and_buckets():
    mem = lambda lo, hi: ((lo, 64, 8, 8), (hi, 64, 8, 8), (hi, 64, 8, 8))
    one = [{"mem_feats": mem(1, 7)}]
    assert choose_profile(one, {"mem_feats": (3, 64, 8, 8)}) == 0
    buckets = [{"mem_feats": mem(1, 3)}, {"mem_feats": mem(4, 7)}]
    assert choose_profile(buckets, {"mem_feats": (2, 64, 8, 8)}) == 0
    assert choose_profile(buckets, {"mem_feats": (5, 64, 8, 8)}) == 1
    # overlapping profiles: the tightest one that fits wins
    overlap = [{"mem_feats": mem(1, 7)}, {"mem_feats": mem(1, 3)}]
    assert choose_profile(overlap, {"mem_feats": (2, 64, 8, 8)}) == 1
    assert choose_profile(overlap, {"mem_feats": (6, 64, 8, 8)}) == 0
    # inputs a profile does not constrain are ignored
    assert choose_profile(one, {"mem_feats": (1, 64, 8, 8), "other": (9,)}) == 0


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
    good = {"vision_feat": (1, 256, 16, 16), "mem_feats": (3, 64, 16, 16),
            "mem_pos": (3, 64, 16, 16), "obj_ptrs": (5, 256), "obj_ptr_pos": (5, 64)}
    good = {k: (v, "float32") for k, v in good.items()}
    assert spec.check_feeds(good) == {"num_mem": 3, "num_ptr": 5}
    with pytest.raises(TensorContractError, match="axis 2 is 32, must be 16"):
        spec.check_feeds({**good, "mem_feats": ((3, 64, 32, 16), "float32")})
    with pytest.raises(TensorContractError, match="rank 3 instead of 4"):
        spec.check_feeds({**good, "mem_pos": ((3, 64, 16), "float32")})
    with pytest.raises(TensorContractError, match="num_mem=2 here but num_mem=3 in input 'mem_feats'"):
        spec.check_feeds({**good, "mem_pos": ((2, 64, 16, 16), "float32")})
    with pytest.raises(ValueError, match=r"num_mem=8 is outside the range 1\.\.7"):
        spec.check_feeds({**good, "mem_feats": ((8, 64, 16, 16), "float32"), "mem_pos": ((8, 64, 16, 16), "float32")})
    with pytest.raises(TensorContractError, match="'obj_ptrs' is float64, the stage takes float32"):
        spec.check_feeds({**good, "obj_ptrs": ((5, 256), "float64")})


def test_engine_usable_here():
    rec = engine_record("10.3.0")
    assert engine_usable_here(rec, "10.3.0", GPU) is None
    assert "TensorRT 8.6.2" in engine_usable_here(engine_record("8.6.2"), "10.3.0", GPU)
    assert "not portable across GPUs" in engine_usable_here(rec, "10.3.0", {"name": "Orin", "compute_capability": "8.7"})
    assert "not portable across GPUs" in engine_usable_here(rec, "10.3.0", {"name": "FakeGPU", "compute_capability": "9.0"})
    with pytest.raises(ModelFolderError, match="lacks"):
        EngineRecord.from_dict({"file": "a.engine"})


# the runner with fakes ------------------------------------------------------------------
def test_binds_by_name_and_computes(fakes, tmp_path):
    with make_runner(tmp_path) as r:
        f = feeds(3)
        out = r.infer(f)
        assert list(out) == ["z"] and isinstance(out["z"], DeviceTensor)
        assert out["z"].shape == (3, 2, 3) and out["z"].dtype == np.float32
        np.testing.assert_allclose(r.to_host(out["z"]), f["x"] + 2 * f["y"], rtol=1e-6)


def test_feeds_of_another_dtype_are_refused(fakes, tmp_path):
    """The tensor contract names the dtype; nothing is cast silently (one check for every backend)."""
    with make_runner(tmp_path) as r:
        f = feeds(1)
        with pytest.raises(TensorContractError, match="'y' is float64, the stage takes float32"):
            r.infer({"x": f["x"], "y": f["y"].astype(np.float64)})
        np.testing.assert_allclose(r.to_host(r.infer(f)["z"]), f["x"] + 2 * f["y"], rtol=1e-6)


def test_buffers_preallocated_at_max_shapes_once(fakes, tmp_path):
    r = make_runner(tmp_path).activate()
    assert {n: b.nbytes for n, b in r._buffers.items()} == {n: 4 * 2 * 3 * 4 for n in "xyz"}
    before = fakes.cudart.mallocs
    for batch in (1, 4, 2):
        r.infer(feeds(batch))
    assert fakes.cudart.mallocs == before  # no per-call device allocation
    r.deactivate()


def test_device_tensor_feed_is_zero_copy(fakes, tmp_path):
    with make_runner(tmp_path) as r:
        f = feeds(2)
        x_dev = r.upload(f["x"])
        copies = len(fakes.cudart.copies)
        out = r.infer({"x": x_dev, "y": f["y"]})
        ctx = fakes.trt.engines[-1].contexts[-1]
        assert ctx.addresses["x"] == x_dev.ptr  # bound directly
        assert len(fakes.cudart.copies) == copies + 1  # only y was copied
        np.testing.assert_allclose(r.to_host(out["z"]), f["x"] + 2 * f["y"], rtol=1e-6)


def test_own_output_fed_back_is_copied_first(fakes, tmp_path):
    with make_runner(tmp_path) as r:
        f = feeds(2)
        z1 = r.infer(f)["z"]
        expected = f["x"] + 2 * f["y"]
        z2 = r.infer({"x": z1, "y": f["y"]})["z"]  # z1's buffer is overwritten by this run
        np.testing.assert_allclose(r.to_host(z2), expected + 2 * f["y"], rtol=1e-6)


def test_stale_and_freed_views_raise(fakes, tmp_path):
    r = make_runner(tmp_path).activate()
    z1 = r.infer(feeds(1))["z"]
    r.infer(feeds(1))
    with pytest.raises(RuntimeError, match="stale"):
        r.to_host(z1)
    z2 = r.infer(feeds(1))["z"]
    r.deactivate()
    with pytest.raises(RuntimeError, match="freed"):
        z2.check_valid()


def test_shape_errors_are_clear(fakes, tmp_path):
    with make_runner(tmp_path) as r:
        with pytest.raises(ValueError, match=r"batch=5 is outside the range 1\.\.4"):
            r.infer(feeds(5))
        bad = feeds(2)
        bad["y"] = bad["y"][:, :, :2]
        with pytest.raises(ValueError, match="input 'y' has shape \\(2, 2, 2\\).*axis 2 is 2, must be 3"):
            r.infer(bad)
        with pytest.raises(TensorContractError, match="missing inputs \\['y'\\]"):
            r.infer({"x": feeds(1)["x"]})
        with pytest.raises(TensorContractError, match="'x' is float64"):
            r.infer({"x": DeviceTensor(r._buffers["x"].ptr, (1, 2, 3), np.float64), "y": feeds(1)["y"]})


def test_engine_profile_narrower_than_spec(fakes, tmp_path):
    with make_runner(tmp_path, cfg=engine_cfg(profiles=((1, 1, 2),))) as r:
        r.infer(feeds(2))
        with pytest.raises(ValueError, match="no optimisation profile"):
            r.infer(feeds(3))  # inside the spec's 1..4, outside the engine's 1..2


def test_profile_switching(fakes, tmp_path):
    with make_runner(tmp_path, cfg=engine_cfg(profiles=((1, 1, 2), (3, 4, 4)))) as r:
        ctx = fakes.trt.engines[-1].contexts[-1]
        # buffers cover the largest profile
        assert r._buffers["z"].nbytes == 4 * 2 * 3 * 4
        ctx.profile_calls.clear()
        for batch in (1, 3, 4, 2):
            f = feeds(batch)
            np.testing.assert_allclose(r.to_host(r.infer(f)["z"]), f["x"] + 2 * f["y"], rtol=1e-6)
        assert ctx.profile_calls == [0, 1, 0]  # switched only when needed


def test_version_mismatch_fails_before_allocating(fakes, tmp_path):
    with pytest.raises(EngineIncompatible, match="rebuild with `python -m export.build` on this device"):
        make_runner(tmp_path, record=engine_record("8.6.1")).activate()
    assert not fakes.cudart.device_mem and not fakes.trt.engines


def test_engine_not_matching_spec(fakes, tmp_path):
    cfg = engine_cfg()
    cfg["order"] = ["z", "x", "w"]
    cfg["inputs"] = {"x": [-1, 2, 3], "w": [-1, 2, 3]}
    r = make_runner(tmp_path, cfg=cfg)
    with pytest.raises(ModelFolderError, match=r"inputs missing \['y'\], unexpected inputs \['w'\]"):
        r.activate()
    assert not r.is_active and not fakes.cudart.device_mem  # released on failure


def test_deactivate_frees_everything(fakes, tmp_path):
    r = make_runner(tmp_path).activate()
    r.upload(np.ones((2, 2, 3), np.float32))
    r.infer(feeds(2))
    assert fakes.cudart.device_mem and fakes.cudart.pinned_mem
    r.deactivate()
    assert not fakes.cudart.device_mem and not fakes.cudart.pinned_mem
    with pytest.raises(RuntimeError, match="not active"):
        r.infer(feeds(1))


def test_pageable_path_without_staging(fakes, tmp_path):
    with make_runner(tmp_path, pinned_staging=False) as r:
        f = feeds(2)
        np.testing.assert_allclose(r.to_host(r.infer(f)["z"]), f["x"] + 2 * f["y"], rtol=1e-6)
        assert not fakes.cudart.pinned_mem


# real TensorRT (skipped without TensorRT and a GPU) -------------------------------------
def _real_status():
    try:
        from export.trt_build import tensorrt_status
    except Exception as e:  # export stack missing on a runtime-only device
        return False, f"export.trt_build not importable: {e}"
    return tensorrt_status()


_REAL_OK, _REAL_WHY = _real_status()


def requires_tensorrt(fn):
    """Mark ``tensorrt`` and skip, with the reason, where TensorRT or a GPU is absent."""
    fn = pytest.mark.skipif(not _REAL_OK, reason=f"needs TensorRT and a CUDA GPU: {_REAL_WHY}")(fn)
    return pytest.mark.tensorrt(fn)


@requires_tensorrt
def test_real_engine_device_chaining(tmp_path):
    """Real build + run: a NumPy feed, a DeviceTensor feed and ORT agree."""
    ort = pytest.importorskip("onnxruntime")
    from export.trt_build import build_engine

    onnx_path = tiny_layernorm_onnx(tmp_path / "tiny.onnx")
    record = build_engine(onnx_path, tmp_path / "tiny.engine", TINY, "fp32", log=lambda s: None)
    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32)
    ref = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with TensorRTStageRunner(TINY, tmp_path / "tiny.engine", record) as r:
        y_host = r.to_host(r.infer({"x": x})["y"])
        y_dev = r.to_host(r.infer({"x": r.upload(x)})["y"])
    np.testing.assert_allclose(y_host, ref, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(y_host, y_dev)
