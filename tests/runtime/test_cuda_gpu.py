"""The CUDA buffer layer on a real GPU with real cuda-python (marker ``gpu``).

Device and pinned buffers, streams, events and every copy direction, through
:mod:`runtime.core.backends.cuda` as the TensorRT runner uses it. Skipped,
with the reason, where cuda-python or a CUDA device is missing (every machine
of this project's CI); ``tests/runtime/test_cuda_python_api.py`` checks the
same module against the real cuda-python of several versions without a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest

from runtime.core.backends import cuda
from runtime.core.backends.cuda import (CudaError, DeviceBuffer, DeviceTensor, Event, PinnedBuffer, PinnedStaging,
                                        Stream, memcpy_dtod_async, memcpy_dtoh_async, memcpy_htod_async, to_host)

_OK, _WHY = cuda.device_status()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _OK, reason=f"needs a CUDA GPU: {_WHY}")]


@pytest.fixture
def stream():
    s = Stream()
    yield s
    s.free()


@pytest.mark.parametrize("dtype,shape", [(np.float32, (3, 5, 7)), (np.float16, (1, 256, 16, 16)),
                                         (np.int64, (4, 2)), (np.uint8, (1080, 1920, 3))])
def test_round_trip_through_device_memory(stream, dtype, shape):
    rng = np.random.default_rng(0)
    host = (rng.standard_normal(shape) * 50).astype(dtype)
    a, b = DeviceBuffer(host.nbytes), DeviceBuffer(host.nbytes)
    try:
        memcpy_htod_async(a.ptr, host, stream)
        memcpy_dtod_async(b.ptr, a.ptr, host.nbytes, stream)
        back = np.empty_like(host)
        memcpy_dtoh_async(back, b.ptr, stream)
        stream.synchronize()
        np.testing.assert_array_equal(back, host)
        np.testing.assert_array_equal(to_host(DeviceTensor(b.ptr, shape, dtype, owner=b, stream=stream), stream), host)
    finally:
        a.free()
        b.free()
    assert a.is_freed and b.is_freed
    a.free()  # idempotent


def test_pinned_staging_reuses_its_buffer_safely(stream):
    """Successive async copies out of one pinned buffer: each waits until the previous one has read it."""
    n = 1 << 20
    staging, dev = PinnedStaging(n * 4), [DeviceBuffer(n * 4) for _ in range(4)]
    try:
        sent = [np.full(n, i, np.float32) for i in range(4)]
        for arr, buf in zip(sent, dev):
            staging.copy(arr, buf.ptr, stream)
        for arr, buf in zip(sent, dev):
            np.testing.assert_array_equal(to_host(DeviceTensor(buf.ptr, (n,), np.float32, owner=buf), stream), arr)
    finally:
        staging.free()
        for b in dev:
            b.free()


def test_pinned_view_and_events(stream):
    pinned = PinnedBuffer(64)
    ev = Event()
    try:
        v = pinned.view((4, 4), np.float32)
        v[...] = 3.0
        dev = DeviceBuffer(64)
        memcpy_htod_async(dev.ptr, v, stream)
        ev.record(stream)
        ev.synchronize()
        np.testing.assert_array_equal(to_host(DeviceTensor(dev.ptr, (4, 4), np.float32), stream), v)
        dev.free()
        with pytest.raises(ValueError, match="do not fit"):
            pinned.view((5, 4), np.float32)
    finally:
        ev.free()
        pinned.free()


def test_views_of_freed_or_overwritten_buffers_raise(stream):
    buf = DeviceBuffer(16)
    t = DeviceTensor(buf.ptr, (4,), np.float32, owner=buf, stream=stream)
    buf.version += 1
    with pytest.raises(RuntimeError, match="stale"):
        to_host(t, stream)
    buf.free()
    with pytest.raises(RuntimeError, match="freed"):
        DeviceTensor(0, (4,), np.float32, owner=buf).check_valid()


def test_cuda_errors_carry_the_error_name():
    with pytest.raises(CudaError, match="cudaError"):
        cuda.cuda_call(cuda.cudart().cudaFree(0xDEAD0))  # not an allocation


def test_device_record_names_this_gpu():
    rec = cuda.gpu_record()
    assert rec["name"] == cuda.device_name() and rec["compute_capability"].count(".") == 1


def test_pooled_buffers_are_reused_in_stream_order(stream):
    """A frame's upload reuses the previous frame's buffer while the copy that reads the old
    contents may still be pending: the stream orders the new write after it (one sync at the end)."""
    pool = cuda.BufferPool()
    rng = np.random.default_rng(0)
    shape = (1, 7, 64, 64, 64)
    old, new = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    out = DeviceBuffer(old.nbytes)
    try:
        first = pool.view(shape, np.float32, stream)
        memcpy_htod_async(first.ptr, old, stream)
        memcpy_dtod_async(out.ptr, first.ptr, old.nbytes, stream)  # reads `first`, asynchronously
        ptr = first.ptr
        del first
        second = pool.view(shape, np.float32, stream)
        assert second.ptr == ptr  # the same buffer, reused
        memcpy_htod_async(second.ptr, new, stream)
        stream.synchronize()
        np.testing.assert_array_equal(to_host(DeviceTensor(out.ptr, shape, np.float32, owner=out), stream), old)
        np.testing.assert_array_equal(to_host(second, stream), new)
    finally:
        out.free()
        pool.free()
