"""The TensorRT runner against the real bindings of one TensorRT version.

Engines, contexts and the runtime are stand-ins of the real classes
(``standins.py``: only members the real class has, calls checked against its
signatures); enums, ``Dims``, ``nptype``, ``Logger`` are the real module's.
CUDA memory is host memory (``tests/cuda_fake.py``), so the stand-in engine
computes ``z = x + y`` on the bound addresses and every copy is checked.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorrt as trt

from runtime.core.backends import cuda
from runtime.core.backends import tensorrt as trt_backend
from runtime.core.backends.cuda import DeviceTensor
from runtime.core.backends.tensorrt import TensorRTStageRunner
from runtime.core.folder import EngineRecord
from runtime.core.spec import StageSpec, TensorContractError, TensorSpec
from runtime.errors import EngineIncompatible, ModelFolderError
from tests.cuda_fake import FakeCudart
from tests.trt_api import standins

GPU = {"name": "FakeGPU", "compute_capability": "8.7"}
TOY = StageSpec(
    "toy",
    inputs=(TensorSpec("x", ("batch", 2, 3)), TensorSpec("y", ("batch", 2, 3))),
    outputs=(TensorSpec("z", ("batch", 2, 3)),),
    axis_ranges={"batch": (1, 2, 4)},
)


def engine(profiles=((1, 2, 4),), inputs=("x", "y")):
    prof = [{n: [[lo, 2, 3], [opt, 2, 3], [hi, 2, 3]] for n in inputs} for lo, opt, hi in profiles]
    return standins.engine_bytes({n: [-1, 2, 3] for n in inputs}, {"z": [-1, 2, 3]}, prof)


def record(version=None, gpu=GPU):
    return EngineRecord("toy.fp32.engine", "0" * 64, "fp32", "fp32", "1" * 64, version or trt.__version__, dict(gpu))


@pytest.fixture
def fakes(monkeypatch):
    rt = FakeCudart()
    monkeypatch.setattr(cuda, "_CUDART", rt)
    rec = standins.install(monkeypatch)
    return rt, rec


def runner(data=None, rec=None, **kw):
    return TensorRTStageRunner(TOY, data or engine(), rec or record(), **kw)


def feeds(batch, seed=0):
    rng = np.random.default_rng(seed)
    return {"y": rng.standard_normal((batch, 2, 3)).astype(np.float32),
            "x": rng.standard_normal((batch, 2, 3)).astype(np.float32)}


def test_the_version_is_in_the_supported_window():
    assert trt_backend.load_tensorrt() is trt


def test_binds_by_name_and_computes(fakes):
    with runner() as r:
        f = feeds(3)
        out = r.infer(f)
        assert list(out) == ["z"] and isinstance(out["z"], DeviceTensor)
        assert out["z"].shape == (3, 2, 3) and out["z"].dtype == np.float32
        np.testing.assert_allclose(r.to_host(out["z"]), f["x"] + f["y"], rtol=1e-6)


def test_buffers_preallocated_at_max_shapes_once(fakes):
    rt, _ = fakes
    r = runner().activate()
    assert {n: b.nbytes for n, b in r._buffers.items()} == {n: 4 * 2 * 3 * 4 for n in "xyz"}
    before = rt.mallocs
    for batch in (1, 4, 2):
        r.infer(feeds(batch))
    assert rt.mallocs == before  # no per-call device allocation
    r.deactivate()


def test_device_tensor_feed_is_zero_copy(fakes):
    rt, rec = fakes
    with runner() as r:
        f = feeds(2)
        x_dev = r.upload(f["x"])
        copies = len(rt.copies)
        out = r.infer({"x": x_dev, "y": f["y"]})
        ctx = object.__getattribute__(r._context, "_members")["__state__"]
        assert ctx["addresses"]["x"] == x_dev.ptr  # bound directly
        assert len(rt.copies) == copies + 1  # only y was copied
        np.testing.assert_allclose(r.to_host(out["z"]), f["x"] + f["y"], rtol=1e-6)


def test_own_output_fed_back_is_copied_first(fakes):
    with runner() as r:
        f = feeds(2)
        z1 = r.infer(f)["z"]
        z2 = r.infer({"x": z1, "y": f["y"]})["z"]  # z1's buffer is overwritten by this run
        np.testing.assert_allclose(r.to_host(z2), f["x"] + 2 * f["y"], rtol=1e-6)


def test_stale_and_freed_views_raise(fakes):
    r = runner().activate()
    z1 = r.infer(feeds(1))["z"]
    r.infer(feeds(1))
    with pytest.raises(RuntimeError, match="stale"):
        r.to_host(z1)
    z2 = r.infer(feeds(1))["z"]
    r.deactivate()
    with pytest.raises(RuntimeError, match="freed"):
        z2.check_valid()


def test_contract_errors_are_clear(fakes):
    with runner() as r:
        with pytest.raises(ValueError, match=r"batch=5 is outside the range 1\.\.4"):
            r.infer(feeds(5))
        bad = feeds(2)
        bad["y"] = bad["y"][:, :, :2]
        with pytest.raises(TensorContractError, match=r"input 'y' has shape \(2, 2, 2\).*axis 2 is 2, must be 3"):
            r.infer(bad)
        with pytest.raises(TensorContractError, match=r"missing inputs \['y'\]"):
            r.infer({"x": feeds(1)["x"]})
        with pytest.raises(TensorContractError, match="'x' is float64"):
            r.infer({"x": DeviceTensor(r._buffers["x"].ptr, (1, 2, 3), np.float64), "y": feeds(1)["y"]})


def test_engine_profile_narrower_than_spec(fakes):
    with runner(engine(profiles=((1, 1, 2),))) as r:
        r.infer(feeds(2))
        with pytest.raises(ValueError, match="no optimisation profile"):
            r.infer(feeds(3))  # inside the spec's 1..4, outside the engine's 1..2


def test_profile_switching(fakes):
    _, rec = fakes
    with runner(engine(profiles=((1, 1, 2), (3, 4, 4)))) as r:
        ctx_state = object.__getattribute__(r._context, "_members")["__state__"]
        assert r._buffers["z"].nbytes == 4 * 2 * 3 * 4  # buffers cover the largest profile
        ctx_state["profile_calls"].clear()
        for batch in (1, 3, 4, 2):
            f = feeds(batch)
            np.testing.assert_allclose(r.to_host(r.infer(f)["z"]), f["x"] + f["y"], rtol=1e-6)
        assert ctx_state["profile_calls"] == [0, 1, 0]  # switched only when needed


def test_engine_of_another_version_or_gpu_fails_before_allocating(fakes):
    rt, rec = fakes
    with pytest.raises(EngineIncompatible, match="rebuild with `python -m export.build` on this device"):
        runner(rec=record("8.6.1")).activate()
    with pytest.raises(EngineIncompatible, match="not portable across GPUs"):
        runner(rec=record(gpu={"name": "Orin", "compute_capability": "8.7"})).activate()
    assert not rt.device_mem and not rec.engines


def test_engine_not_matching_spec(fakes):
    rt, _ = fakes
    r = runner(engine(inputs=("x", "w")))
    with pytest.raises(ModelFolderError, match=r"inputs missing \['y'\], unexpected inputs \['w'\]"):
        r.activate()
    assert not r.is_active and not rt.device_mem  # released on failure


def test_deactivate_frees_everything(fakes):
    rt, _ = fakes
    r = runner().activate()
    r.upload(np.ones((2, 2, 3), np.float32))
    r.infer(feeds(2))
    assert rt.device_mem and rt.pinned_mem
    r.deactivate()
    assert not rt.device_mem and not rt.pinned_mem
    with pytest.raises(RuntimeError, match="not active"):
        r.infer(feeds(1))


def test_a_frames_uploads_are_reused_by_the_next_frame(fakes):
    """A tracker uploads its memory bank every frame: device memory must not grow with frames,
    and no frame may allocate or free (cudaFree waits for the whole device). The fake's calls are
    synchronous, so this checks the bookkeeping; the ordering on a real stream is
    tests/runtime/test_cuda_gpu.py's."""
    rt, _ = fakes
    r = runner().activate()
    f = feeds(2)
    kept = r.upload(f["x"])  # a cached reference memory
    mallocs = None
    for i in range(50):
        per_frame = r.upload(feeds(2, seed=i)["y"])
        np.testing.assert_allclose(r.to_host(r.infer({"x": kept, "y": per_frame})["z"]),
                                   f["x"] + feeds(2, seed=i)["y"], rtol=1e-6)
        del per_frame
        if mallocs is None:
            mallocs, held = rt.mallocs, len(rt.device_mem)
    assert rt.mallocs == mallocs and len(rt.device_mem) == held  # frame 2..50: the same buffer
    np.testing.assert_array_equal(r.to_host(kept), f["x"])  # the kept one untouched
    r.deactivate()
    assert not rt.device_mem  # everything, the kept one too, is freed at deactivate
    with pytest.raises(RuntimeError, match="freed"):
        kept.check_valid()


def test_a_run_reading_another_streams_memory_is_waited_for_there(fakes):
    """Runners on streams of their own: the producer's stream waits for the consumer's run, so
    the producer's next write (its next run, a reuse of its pooled upload) cannot overtake it."""
    rt, _ = fakes
    a, b = runner().activate(), runner().activate()
    assert a.stream.handle != b.stream.handle
    f = feeds(2)
    x = a.upload(f["x"])  # pooled on a's stream
    np.testing.assert_allclose(b.to_host(b.infer({"x": x, "y": f["y"]})["z"]), f["x"] + f["y"], rtol=1e-6)
    assert rt.waits == [(a.stream.handle, b._ran.handle)]
    b.infer(feeds(2))  # its own stream only: nothing to wait for
    assert len(rt.waits) == 1
    b.deactivate()
    a.deactivate()
    assert not rt.device_mem


def test_idle_pooled_buffers_beyond_the_cap_are_freed(fakes):
    rt, _ = fakes
    pool = cuda.BufferPool(max_idle_bytes=100)
    a, b = pool.view((10,), np.float32, None), pool.view((20,), np.float32, None)
    assert len(rt.device_mem) == 2
    del a  # 40 idle bytes: kept for the next (10,) float32 view
    assert len(rt.device_mem) == 2 and pool.idle_bytes == 40
    del b  # 40 + 80 > 100: surplus, freed at the next view (not in the weakref callback)
    assert len(rt.device_mem) == 2 and pool.idle_bytes == 40
    c = pool.view((10,), np.float32, None)
    assert len(rt.device_mem) == 1 and pool.idle_bytes == 0 and c.owner.version == 1
    d = pool.view((30,), np.float32, None)
    del d  # 120 > 100: surplus, freed by free() below
    pool.free()
    assert not rt.device_mem
    with pytest.raises(RuntimeError, match="freed"):
        c.check_valid()
    del c  # after free(): filed nowhere, no double free


def test_keep_copies_an_output_on_the_device(fakes):
    """ImagePredictor keeps an image's features across predict() calls: copied device to device,
    valid after the runner's next run overwrote its output buffer, freed with its view."""
    rt, _ = fakes
    r = runner().activate()
    first = feeds(2)
    z = r.infer(first)["z"]
    copies = len(rt.copies)
    kept = r.keep(z)
    assert [kind for kind, _ in rt.copies[copies:]] == [3]  # one device-to-device copy, no host trip
    r.infer(feeds(2, seed=1))  # overwrites z's buffer
    with pytest.raises(RuntimeError, match="stale"):
        z.check_valid()
    np.testing.assert_allclose(r.to_host(kept), first["x"] + first["y"], rtol=1e-6)
    host = np.ones((2, 2, 3), np.float32)
    assert r.keep(host) is host  # not one of its outputs: passes through
    held, nbytes = len(rt.device_mem), kept.nbytes
    del kept  # back in the runner's pool, for the next image's features
    assert len(rt.device_mem) == held and r._uploads.idle_bytes == nbytes
    r.deactivate()
    assert not rt.device_mem


def test_pageable_path_without_staging(fakes):
    rt, _ = fakes
    with runner(pinned_staging=False) as r:
        f = feeds(2)
        np.testing.assert_allclose(r.to_host(r.infer(f)["z"]), f["x"] + f["y"], rtol=1e-6)
        assert not rt.pinned_mem


def test_a_removed_member_fails_as_on_the_real_thing():
    """The stand-ins allow only what the real class of this version has."""
    eng = standins.make_engine({"inputs": {"x": [1]}, "outputs": {"z": [1]}, "profiles": [], "dtype": "FLOAT"})
    with pytest.raises(AttributeError, match="no attribute 'get_binding_index'"):
        eng.get_binding_index("x")  # removed in TensorRT 10
    with pytest.raises(AssertionError, match="does not have"):
        standins.StandIn(trt.ICudaEngine, get_binding_index=lambda n: 0)
    ctx = eng.create_execution_context()
    with pytest.raises(TypeError, match="set_input_shape called with 1 args"):
        ctx.set_input_shape("x")  # the real signature takes a name and a shape
