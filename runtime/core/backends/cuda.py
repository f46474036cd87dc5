"""CUDA device memory, streams and copies through cuda-python.

This is the only module of the project that touches CUDA memory. It follows
TensorRT's ``samples/python/common_runtime.py``: cuda-python functions return
``(err, value...)`` tuples, which :func:`cuda_call` turns into a value or a
:class:`CudaError`; buffers are freed explicitly (``free()``), never by a
finaliser, because CUDA objects released at interpreter exit crash easily.

Objects:

- :class:`DeviceBuffer`: ``nbytes`` of device memory (``cudaMalloc``).
- :class:`BufferPool`: buffers for short-lived views (per-frame uploads),
  back in the pool when the view is dropped, freed explicitly at the end.
- :class:`PinnedBuffer`: page-locked host memory, for truly asynchronous
  host->device copies (copies from pageable NumPy memory are staged by the
  driver and block the host).
- :class:`DeviceTensor`: a *view* ``(ptr, shape, dtype)`` into a buffer; what
  the TensorRT runner returns and accepts, so stages chain on the device.
- :class:`Stream` / :class:`Event`: one stream per pipeline; events order the
  reuse of pinned staging buffers.

Every CUDA import is lazy and guarded: importing this module never fails;
the first CUDA call raises :class:`~runtime.core.backends.base.BackendUnavailable`
naming what is missing.
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from runtime.errors import BackendUnavailable, Sam2EdgeError

INSTALL_HINT = (
    "install NVIDIA's cuda-python for the CUDA version of the driver, e.g. "
    "`pip install 'cuda-python==12.*'` (JetPack 6 ships CUDA 12), on a machine "
    "with an NVIDIA GPU and driver"
)

# The cuda-python runtime module, loaded by cudart() on first use. Tests replace
# it with a fake through monkeypatch.setattr(cuda, "_CUDART", fake).
_CUDART: Any = None


class CudaError(Sam2EdgeError):
    """A CUDA runtime call returned an error code."""


def _import_cudart() -> Any:
    try:  # cuda-python >= 12.6 (and 13.x) layout
        from cuda.bindings import runtime as cudart_module

        return cudart_module
    except ImportError:
        pass
    try:  # older cuda-python (11.x, 12.0 .. 12.5)
        from cuda import cudart as cudart_module

        return cudart_module
    except ImportError as e:
        raise BackendUnavailable(f"cuda-python is not importable here ({e}); {INSTALL_HINT}") from e


def cudart() -> Any:
    """The cuda-python runtime API module (``cudaMalloc``, ``cudaMemcpyAsync``, ...)."""
    global _CUDART
    if _CUDART is None:
        _CUDART = _import_cudart()
    return _CUDART


def _error_text(err: Any) -> str:
    try:
        name = cudart().cudaGetErrorName(err)[1]
        desc = cudart().cudaGetErrorString(err)[1]
        name = name.decode() if isinstance(name, bytes) else str(name)
        desc = desc.decode() if isinstance(desc, bytes) else str(desc)
        return f"{name} ({desc})"
    except Exception:  # the error text is a courtesy; never mask the real error
        return repr(err)


def cuda_call(result: Any) -> Any:
    """Unpack a cuda-python ``(err, *values)`` return; raise :class:`CudaError` on error.

    Returns ``None`` for no value, the value for one, a tuple for several.
    """
    if not isinstance(result, tuple):
        result = (result,)
    err, values = result[0], result[1:]
    if int(err) != 0:
        raise CudaError(f"CUDA error {_error_text(err)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


# device ---------------------------------------------------------------------
def device_status() -> Tuple[bool, str]:
    """``(True, gpu name)`` when cuda-python imports and sees a CUDA device, else the reason."""
    try:
        rt = cudart()
    except BackendUnavailable as e:
        return False, str(e)
    try:
        result = rt.cudaGetDeviceCount()
    except Exception as e:  # cuda-python 12.2 without a driver: RuntimeError("Failed to dlopen libcuda.so.1")
        return False, (f"no usable CUDA device: cuda-python could not reach the driver "
                       f"({type(e).__name__}: {e}); an NVIDIA GPU and its driver are needed")
    if int(result[0]) != 0:
        return False, (
            f"no usable CUDA device: cudaGetDeviceCount failed with {_error_text(result[0])}; "
            "an NVIDIA GPU and its driver are needed"
        )
    if result[1] < 1:
        return False, "no CUDA device found; an NVIDIA GPU and its driver are needed"
    try:
        return True, device_name()
    except CudaError as e:
        return False, f"CUDA device present but not usable: {e}"


def require_device() -> None:
    """Raise :class:`BackendUnavailable` unless a CUDA device is usable here."""
    ok, why = device_status()
    if not ok:
        raise BackendUnavailable(why)


def _properties(device: Optional[int]) -> Any:
    rt = cudart()
    if device is None:
        device = cuda_call(rt.cudaGetDevice())
    return cuda_call(rt.cudaGetDeviceProperties(device))


def device_name(device: Optional[int] = None) -> str:
    """Marketing name of the current (or given) GPU, e.g. ``"Orin"`` or ``"NVIDIA H100 ..."``."""
    name = _properties(device).name
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
    return str(name).strip()


def gpu_record(device: Optional[int] = None) -> Dict[str, str]:
    """``{"name", "compute_capability"}`` of the GPU: what an engine is tied to."""
    props = _properties(device)
    return {"name": device_name(device), "compute_capability": f"{props.major}.{props.minor}"}


def device_memory_in_use() -> int:
    """Bytes of the current GPU's memory in use, by every process (``cudaMemGetInfo``)."""
    free, total = cuda_call(cudart().cudaMemGetInfo())
    return int(total) - int(free)


# memory -----------------------------------------------------------------------
class DeviceBuffer:
    """``nbytes`` of device memory; free it with :meth:`free` (idempotent).

    ``version`` is bumped by whoever overwrites the buffer's contents in place
    (a runner's next ``infer``), so stale :class:`DeviceTensor` views are caught.
    """

    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)
        # cudaMalloc(0) returns NULL; keep every live buffer a real allocation.
        self.ptr: int = int(cuda_call(cudart().cudaMalloc(max(self.nbytes, 1))))
        self.version = 0

    @property
    def is_freed(self) -> bool:
        return self.ptr == 0

    def free(self) -> None:
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            cuda_call(cudart().cudaFree(ptr))

    def __repr__(self) -> str:
        return f"DeviceBuffer(ptr={self.ptr:#x}, nbytes={self.nbytes})"


class BufferPool:
    """Device buffers for views that come and go (a frame's uploads), reused instead of freed.

    :meth:`view` hands out a :class:`DeviceTensor` over a buffer of its own;
    when the view is dropped, the buffer goes back to the pool (no CUDA call:
    a weakref callback only files it), and the next request of that size
    takes it. So frame after frame allocates nothing and never calls
    ``cudaFree``, which would wait for the whole device. The next copy into a
    reused buffer is ordered after the work that read it by the stream: the
    pool's own, or, for a runner on another stream, that runner's wait of
    the pool's stream for its run (``TensorRTStageRunner``). Idle buffers
    beyond ``max_idle_bytes`` (shapes that stopped coming) are freed at the
    next :meth:`view`. :meth:`free` frees everything, views included. A view
    may be dropped on any thread, so the pool takes a (reentrant) lock.
    """

    def __init__(self, max_idle_bytes: int = 512 << 20):
        self.max_idle_bytes = int(max_idle_bytes)
        self._idle: Dict[int, List[DeviceBuffer]] = {}
        self._owned: List[DeviceBuffer] = []
        self._surplus: List[DeviceBuffer] = []  # idle beyond the cap, freed outside the callback
        self._lock = threading.RLock()

    @property
    def idle_bytes(self) -> int:
        return sum(b.nbytes for bufs in self._idle.values() for b in bufs)

    def view(self, shape: Sequence[int], dtype: Any, stream: Optional[Stream]) -> DeviceTensor:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        with self._lock:
            surplus, self._surplus = self._surplus, []
            for buf in surplus:
                buf.free()
            idle = self._idle.get(nbytes)
            if idle:
                buf = idle.pop()
                buf.version += 1
            else:
                buf = DeviceBuffer(nbytes)
                self._owned.append(buf)
        tensor = DeviceTensor(buf.ptr, shape, dtype, owner=buf, stream=stream)
        weakref.finalize(tensor, self._release, buf).atexit = False
        return tensor

    def _release(self, buf: DeviceBuffer) -> None:
        with self._lock:
            if buf.is_freed:
                return
            if self.idle_bytes + buf.nbytes > self.max_idle_bytes:
                self._owned.remove(buf)
                self._surplus.append(buf)
            else:
                self._idle.setdefault(buf.nbytes, []).append(buf)

    def free(self) -> None:
        with self._lock:
            owned, self._owned = self._owned + self._surplus, []
            self._surplus, self._idle = [], {}
        for buf in owned:
            buf.free()


class PinnedBuffer:
    """Page-locked host memory (``cudaMallocHost``) with a NumPy view."""

    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)
        self.ptr: int = int(cuda_call(cudart().cudaMallocHost(max(self.nbytes, 1))))

    def view(self, shape: Sequence[int], dtype: Any) -> np.ndarray:
        """A NumPy array over the first ``prod(shape) * itemsize`` bytes."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes > self.nbytes:
            raise ValueError(f"{nbytes} bytes do not fit in a {self.nbytes}-byte pinned buffer")
        raw = (ctypes.c_byte * max(nbytes, 1)).from_address(self.ptr)
        return np.frombuffer(raw, dtype=dtype, count=nbytes // dtype.itemsize).reshape(shape)

    def free(self) -> None:
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            cuda_call(cudart().cudaFreeHost(ptr))


class Stream:
    """A CUDA stream. Runners that chain device tensors should share one."""

    def __init__(self) -> None:
        self.handle: Any = cuda_call(cudart().cudaStreamCreate())

    @property
    def ptr(self) -> int:
        """The raw ``cudaStream_t`` as an int (what TensorRT's ``*_async`` calls take)."""
        return int(self.handle) if self.handle is not None else 0

    def synchronize(self) -> None:
        cuda_call(cudart().cudaStreamSynchronize(self.handle))

    def wait(self, event: "Event") -> None:
        """Later work on this stream waits (on the device) for ``event``'s last record."""
        cuda_call(cudart().cudaStreamWaitEvent(self.handle, event.handle, 0))

    def free(self) -> None:
        if self.handle is not None:
            handle, self.handle = self.handle, None
            cuda_call(cudart().cudaStreamDestroy(handle))


class Event:
    """A CUDA event: marks a point in a stream that the host can wait for."""

    def __init__(self) -> None:
        self.handle: Any = cuda_call(cudart().cudaEventCreate())

    def record(self, stream: Stream) -> None:
        cuda_call(cudart().cudaEventRecord(self.handle, stream.handle))

    def synchronize(self) -> None:
        cuda_call(cudart().cudaEventSynchronize(self.handle))

    def free(self) -> None:
        if self.handle is not None:
            handle, self.handle = self.handle, None
            cuda_call(cudart().cudaEventDestroy(handle))


class DeviceTensor:
    """A typed view ``(ptr, shape, dtype)`` into device memory owned by someone else.

    ``owner`` is the :class:`DeviceBuffer` holding the data; the view records
    the owner's ``version`` when made and refuses to be used once the owner is
    freed or overwritten (see :meth:`check_valid`). ``stream`` is the stream
    whose work produces the data; consumers on another stream synchronise it.
    """

    __slots__ = ("ptr", "shape", "dtype", "owner", "version", "stream", "__weakref__")

    def __init__(self, ptr: int, shape: Sequence[int], dtype: Any,
                 owner: Optional[DeviceBuffer] = None, stream: Optional[Stream] = None):
        self.ptr = int(ptr)
        self.shape: Tuple[int, ...] = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.owner = owner
        self.version = owner.version if owner is not None else 0
        self.stream = stream

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def check_valid(self) -> None:
        """Raise ``RuntimeError`` if the memory behind this view was freed or overwritten."""
        if self.owner is None:
            return
        if self.owner.is_freed:
            raise RuntimeError(
                f"{self!r} points into freed device memory (its runner was deactivated)"
            )
        if self.owner.version != self.version:
            raise RuntimeError(
                f"{self!r} is stale: its runner ran again and overwrote the output buffer; "
                "copy it (to_host) or upload() it before the next infer()"
            )

    def __repr__(self) -> str:
        return f"DeviceTensor(shape={self.shape}, dtype={self.dtype.name}, ptr={self.ptr:#x})"


# copies ---------------------------------------------------------------------
def _kind(name: str) -> Any:
    return getattr(cudart().cudaMemcpyKind, name)


def memcpy_htod_async(dst_ptr: int, src: np.ndarray, stream: Stream) -> None:
    """Copy a C-contiguous host array to device memory on ``stream``.

    From pageable memory the call returns once the driver staged the data, so
    ``src`` may be released afterwards; from pinned memory it is fully async.
    """
    if not src.flags["C_CONTIGUOUS"]:
        raise ValueError("host array must be C-contiguous (use np.ascontiguousarray)")
    cuda_call(cudart().cudaMemcpyAsync(
        dst_ptr, src.ctypes.data, src.nbytes, _kind("cudaMemcpyHostToDevice"), stream.handle))


def memcpy_dtoh_async(dst: np.ndarray, src_ptr: int, stream: Stream) -> None:
    """Copy device memory into a C-contiguous host array on ``stream`` (sync before reading)."""
    if not dst.flags["C_CONTIGUOUS"] or not dst.flags["WRITEABLE"]:
        raise ValueError("host destination must be a writeable C-contiguous array")
    cuda_call(cudart().cudaMemcpyAsync(
        dst.ctypes.data, src_ptr, dst.nbytes, _kind("cudaMemcpyDeviceToHost"), stream.handle))


def memcpy_dtod_async(dst_ptr: int, src_ptr: int, nbytes: int, stream: Stream) -> None:
    cuda_call(cudart().cudaMemcpyAsync(
        dst_ptr, src_ptr, int(nbytes), _kind("cudaMemcpyDeviceToDevice"), stream.handle))


class PinnedStaging:
    """A reusable pinned buffer for host->device copies of one tensor.

    ``copy(array, dst_ptr, stream)`` writes ``array`` into pinned memory and
    enqueues an async copy; before overwriting the pinned memory on the next
    call it waits (event) until the previous copy has read it.
    """

    def __init__(self, nbytes: int):
        self.buffer = PinnedBuffer(nbytes)
        self.event = Event()

    def copy(self, array: np.ndarray, dst_ptr: int, stream: Stream) -> None:
        self.event.synchronize()  # previous copy out of this buffer has finished
        view = self.buffer.view(array.shape, array.dtype)
        np.copyto(view, array, casting="no")
        cuda_call(cudart().cudaMemcpyAsync(
            dst_ptr, self.buffer.ptr, array.nbytes, _kind("cudaMemcpyHostToDevice"),
            stream.handle))
        self.event.record(stream)

    def free(self) -> None:
        self.event.free()
        self.buffer.free()


def to_host(tensor: DeviceTensor, stream: Stream) -> np.ndarray:
    """A new NumPy array with the contents of ``tensor`` (synchronises ``stream``)."""
    tensor.check_valid()
    if tensor.stream is not None and tensor.stream is not stream:
        tensor.stream.synchronize()
    out = np.empty(tensor.shape, dtype=tensor.dtype)
    if out.nbytes:
        memcpy_dtoh_async(out, tensor.ptr, stream)
    stream.synchronize()
    return out
