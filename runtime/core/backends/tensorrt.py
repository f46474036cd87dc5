"""TensorRT stage runner: one engine, name-bound tensors, preallocated buffers.

Supported TensorRT: :data:`SUPPORTED` (10.0 up to 11.x: JetPack 6's 10.3 and
what ``pip install tensorrt`` gives today), checked against the real Python
bindings of 10.3, 10.16 and 11.4 in CI (``tests/trt_api``). The runner uses
the name-based tensor API (``num_io_tensors`` / ``get_tensor_name`` /
``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``). Device
memory goes through :mod:`runtime.core.backends.cuda` (cuda-python); nothing
here allocates per call.

Lifecycle (see :class:`~runtime.core.backends.base.StageRunner`):

- ``activate``: check the engine record against this machine (TensorRT version
  and GPU: engines are not portable), deserialize, create the context, and
  allocate one device buffer per I/O tensor at the largest shape any
  optimisation profile admits.
- ``infer(feeds)``: a feed is a NumPy array (copied into the input buffer,
  through pinned staging) or a :class:`~runtime.core.backends.cuda.DeviceTensor`
  (bound directly, zero copy). Shapes are checked against the stage spec and
  the engine's profile ranges before anything is enqueued. Outputs come back
  as ``DeviceTensor`` views into the runner's output buffers, valid until the
  runner's next ``infer`` (a stale view raises instead of reading garbage).
- ``deactivate``: synchronise, free every buffer, drop the engine.

Runners that pass device tensors to one another should share one
:class:`~runtime.core.backends.cuda.Stream` (pass ``stream=``); a tensor from
another stream is synchronised before use.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from runtime.core.backends import cuda
from runtime.core.backends.base import StageRunner
from runtime.core.backends.cuda import BufferPool, DeviceBuffer, DeviceTensor, PinnedStaging, Stream
from runtime.core.folder import EngineRecord, engine_usable_here
from runtime.core.spec import StageSpec
from runtime.errors import BackendUnavailable, EngineIncompatible, ModelFolderError

LOG = logging.getLogger(__name__)

Shape = Tuple[int, ...]
ShapeRange = Tuple[Shape, Shape, Shape]  # (min, opt, max)

REBUILD_HINT = "rebuild with `python -m export.build` on this device"

TENSORRT_INSTALL_HINT = (
    "TensorRT's Python package `tensorrt` is needed: on Jetson it comes with JetPack 6 "
    "(TensorRT 10.3: apt install python3-libnvinfer); on an x86 machine with an NVIDIA GPU, "
    "`pip install -e '.[tensorrt-cu13]'` (TensorRT 11, CUDA 13 driver) or "
    "`pip install -e '.[tensorrt-cu12]'` (TensorRT 10.x, CUDA 12 driver). It cannot be "
    "installed on machines without an NVIDIA GPU; use the onnxruntime backend there"
)
# [min, max) (major, minor) of the TensorRT versions this project builds and runs engines with:
# 10.0 is the first with both the strongly typed networks and the name-based (v3) tensor API the
# code uses; 12 is unreleased (its API is unchecked).
SUPPORTED = ((10, 0), (12, 0))


# tensorrt module ------------------------------------------------------------------
def load_tensorrt() -> Any:
    """Import ``tensorrt`` or raise :class:`BackendUnavailable` saying how to get it."""
    try:
        import tensorrt  # noqa: PLC0415 (guarded: absent on machines without a GPU)
    except ImportError as e:
        raise BackendUnavailable(f"TensorRT is not importable here ({e}). {TENSORRT_INSTALL_HINT}") from e
    v = version_tuple(tensorrt.__version__)
    lo, hi = SUPPORTED
    if v < lo:
        raise BackendUnavailable(
            f"TensorRT {tensorrt.__version__} is too old: this project builds strongly typed engines "
            f"and needs TensorRT >= {lo[0]}.{lo[1]} (JetPack 6 ships 10.3; JetPack 5's 8.5 lacks strongly "
            "typed networks and LayerNormalization in its ONNX parser). Upgrade TensorRT, or use the "
            "onnxruntime backend")
    if v >= hi:
        raise BackendUnavailable(
            f"TensorRT {tensorrt.__version__} is newer than this project supports (< {hi[0]}.{hi[1]}; its "
            "API was checked against 10.3 .. 11.4): install TensorRT 11.x "
            "(`pip install -e '.[tensorrt-cu13]'`), or use the onnxruntime backend")
    return tensorrt


def why_not_runnable(folder, stages: Sequence[str]) -> Optional[str]:
    """Why the TensorRT backend cannot run ``stages`` of ``folder`` here, or None if it can.

    Checks, cheapest first: every stage has an engine, TensorRT imports and is
    in the supported window, a CUDA device is usable, and every engine was
    built with this TensorRT for this GPU (:func:`runtime.core.folder.engine_usable_here`).
    """
    missing = [s for s in stages if folder.stage(s).engine is None]
    if missing:
        return (f"the folder has no TensorRT engines for {missing} (built where TensorRT could not run: "
                f"{folder.manifest.tensorrt.get('reason', 'no reason recorded')})")
    try:
        trt = load_tensorrt()
    except BackendUnavailable as e:
        return str(e)
    ok, why = cuda.device_status()
    if not ok:
        return why
    gpu = cuda.gpu_record()
    for s in stages:
        why = engine_usable_here(folder.stage(s).engine, trt.__version__, gpu)
        if why:
            return f"{why} ({REBUILD_HINT})"
    return None


_LOGGERS: Dict[int, Any] = {}


def trt_logger(trt: Any) -> Any:
    """One ``trt.Logger`` per process (TensorRT warns when builders get different loggers)."""
    key = id(trt)
    if key not in _LOGGERS:
        _LOGGERS[key] = trt.Logger(trt.Logger.WARNING)
    return _LOGGERS[key]


def version_tuple(version: str) -> Tuple[int, int]:
    """``(major, minor)`` of a version string such as ``"10.3.0"``; ``(0, 0)`` if unreadable."""
    try:
        major, minor = (str(version).split(".") + ["0"])[:2]
        return int(major), int(minor)
    except ValueError:
        return 0, 0


# pure helpers (unit-tested without TensorRT) ----------------------------------------
def shape_fits(shape: Sequence[int], rng: ShapeRange) -> bool:
    lo, _, hi = rng
    return len(shape) == len(lo) and all(a <= s <= b for s, a, b in zip(shape, lo, hi))


def choose_profile(ranges_per_profile: Sequence[Mapping[str, ShapeRange]],
                   shapes: Mapping[str, Sequence[int]]) -> int:
    """Index of the optimisation profile to run ``shapes`` with.

    ``ranges_per_profile[i][name] = (min, opt, max)`` for the inputs profile
    ``i`` constrains. Among the profiles that admit every shape, the tightest
    one wins (smallest total max volume; e.g. the smallest ``num_mem`` bucket
    that holds the current memory count), ties going to the lower index.
    Raises ``ValueError`` listing the ranges when no profile fits.
    """
    best, best_cost = -1, None
    for index, ranges in enumerate(ranges_per_profile):
        if all(shape_fits(tuple(shapes[n]), r) for n, r in ranges.items() if n in shapes):
            cost = sum(int(np.prod(r[2], dtype=np.int64)) for r in ranges.values())
            if best_cost is None or cost < best_cost:
                best, best_cost = index, cost
    if best < 0:
        lines = [
            f"  profile {i}: "
            + ", ".join(f"{n} min {r[0]} max {r[2]}" for n, r in ranges.items() if n in shapes)
            for i, ranges in enumerate(ranges_per_profile)
        ]
        got = ", ".join(f"{n} {tuple(s)}" for n, s in shapes.items())
        raise ValueError(
            f"no optimisation profile of the engine admits the input shapes ({got}):\n"
            + "\n".join(lines)
            + f"\nfeed shapes inside these ranges, or {REBUILD_HINT} with wider axis ranges"
        )
    return best


def _shape_of(value: Any) -> Shape:
    if isinstance(value, DeviceTensor):
        return value.shape
    return tuple(int(d) for d in np.shape(value))


def _volume(shape: Sequence[int]) -> int:
    return int(np.prod(tuple(shape), dtype=np.int64))


# the runner -------------------------------------------------------------------------
class TensorRTStageRunner(StageRunner):
    """Runs one serialized TensorRT engine; see the module docs for the contract."""

    backend_name = "tensorrt"

    def __init__(self, spec: StageSpec, engine: Union[bytes, str, Path], engine_record: EngineRecord,
                 stream: Optional[Stream] = None, *, pinned_staging: bool = True):
        super().__init__(spec, engine_record.file)
        self.engine = engine  # the serialized engine (bytes, as hashed by the model folder) or its path
        self.engine_record = engine_record
        self.pinned_staging = pinned_staging
        self._given_stream = stream
        self._reset()

    def _reset(self) -> None:
        self.stream: Optional[Stream] = None
        self._engine: Any = None
        self._context: Any = None
        self._runtime: Any = None
        self._dtypes: Dict[str, np.dtype] = {}
        self._outputs: List[str] = []
        self._profiles: List[Dict[str, ShapeRange]] = []
        self._active_profile = -1
        self._buffers: Dict[str, DeviceBuffer] = {}
        self._staging: Dict[str, PinnedStaging] = {}
        self._uploads = BufferPool()
        self._ran: Optional[cuda.Event] = None  # recorded after a run that read another stream's memory

    # lifecycle -----------------------------------------------------------------
    def _activate(self) -> None:
        trt = load_tensorrt()
        cuda.require_device()
        why = engine_usable_here(self.engine_record, trt.__version__, cuda.gpu_record())
        if why:
            raise EngineIncompatible(f"{why}: {REBUILD_HINT}")
        if not isinstance(self.engine, bytes) and not Path(self.engine).is_file():
            raise ModelFolderError(f"engine file {str(self.engine)!r} is missing; {REBUILD_HINT}")
        try:
            self._open(trt)
        except BaseException:
            self._release()
            raise

    def _open(self, trt: Any) -> None:
        self.stream = self._given_stream or Stream()
        self._runtime = trt.Runtime(trt_logger(trt))
        data = self.engine if isinstance(self.engine, bytes) else Path(self.engine).read_bytes()
        self._engine = self._runtime.deserialize_cuda_engine(data)
        if self._engine is None:
            raise EngineIncompatible(
                f"TensorRT could not deserialize {self.source!r} (see its log above); {REBUILD_HINT}"
            )
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise RuntimeError(f"TensorRT could not create an execution context for {self.spec.name!r}")
        self._read_io(trt)
        self._allocate()

    def _read_io(self, trt: Any) -> None:
        """Map engine I/O names to dtypes and read every profile's input ranges."""
        engine = self._engine
        inputs, outputs = [], []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            self._dtypes[name] = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (inputs if is_input else outputs).append(name)
        missing_in = sorted(set(self.spec.input_names) - set(inputs))
        extra_in = sorted(set(inputs) - set(self.spec.input_names))
        missing_out = sorted(set(self.spec.output_names) - set(outputs))
        wrong = [f"{t.name} is {self._dtypes[t.name].name}, spec {t.dtype}"
                 for t in self.spec.inputs + self.spec.outputs
                 if t.name in self._dtypes and self._dtypes[t.name].name != t.dtype]
        if missing_in or extra_in or missing_out or wrong:
            raise ModelFolderError(
                f"engine {self.source!r} does not match stage {self.spec.name!r}: "
                f"inputs missing {missing_in}, unexpected inputs {extra_in}, outputs missing "
                f"{missing_out}, dtypes {wrong} (engine has inputs {inputs}, outputs {outputs}); "
                f"{REBUILD_HINT}"
            )
        self._outputs = outputs
        for p in range(max(1, engine.num_optimization_profiles)):
            ranges: Dict[str, ShapeRange] = {}
            for name in inputs:
                static = tuple(engine.get_tensor_shape(name))
                if all(d >= 0 for d in static):
                    ranges[name] = (static, static, static)
                else:
                    lo, opt, hi = engine.get_tensor_profile_shape(name, p)
                    ranges[name] = (tuple(lo), tuple(opt), tuple(hi))
            self._profiles.append(ranges)

    def _set_profile(self, index: int) -> None:
        if index != self._active_profile:
            if not self._context.set_optimization_profile_async(index, self.stream.ptr):
                raise RuntimeError(f"TensorRT refused optimisation profile {index} for {self.spec.name!r}")
            self._active_profile = index

    def _allocate(self) -> None:
        """One buffer per I/O tensor, sized for the largest shape of any profile."""
        sizes: Dict[str, int] = {}
        for p, ranges in enumerate(self._profiles):
            self._set_profile(p)
            for name, (_, _, hi) in ranges.items():
                sizes[name] = max(sizes.get(name, 0), _volume(hi))
                if not self._context.set_input_shape(name, hi):
                    raise RuntimeError(f"TensorRT rejected max shape {hi} for input {name!r}")
            for name in self._outputs:
                shape = tuple(self._context.get_tensor_shape(name))
                if any(d < 0 for d in shape):  # data-dependent: fall back to the spec
                    spec_t = self.spec.output(name)
                    shape = spec_t.concrete_shape({a: r[2] for a, r in self.spec.axis_ranges.items()})
                sizes[name] = max(sizes.get(name, 0), _volume(shape))
        for name, count in sizes.items():
            self._buffers[name] = DeviceBuffer(count * self._dtypes[name].itemsize)

    def _deactivate(self) -> None:
        self._release()

    def _release(self) -> None:
        if self.stream is not None and self.stream.handle is not None:
            try:
                self.stream.synchronize()
            except cuda.CudaError as e:  # still free what we can
                LOG.warning("stream synchronize failed while releasing %s: %s", self.spec.name, e)
        for buf in self._buffers.values():
            buf.free()
        self._uploads.free()
        if self._ran is not None:
            self._ran.free()
        for staging in self._staging.values():
            staging.free()
        self._context = self._engine = self._runtime = None
        if self.stream is not None and self.stream is not self._given_stream:
            self.stream.free()
        self._reset()

    # inference ---------------------------------------------------------------------
    def _owns(self, value: DeviceTensor) -> bool:
        """Whether ``value`` views one of this runner's own buffers (its next run overwrites them)."""
        return value.owner is not None and value.owner in self._buffers.values()

    def _bind_input(self, name: str, value: Any) -> Tuple[Shape, int]:
        """Return (shape, device pointer) for one feed, copying host data in."""
        dtype, buf = self._dtypes[name], self._buffers[name]
        if isinstance(value, DeviceTensor):
            value.check_valid()
            if value.dtype != dtype:
                raise TypeError(
                    f"stage {self.spec.name!r}: input {name!r} is a {value.dtype.name} device "
                    f"tensor, the engine wants {dtype.name}"
                )
            if value.stream is not None and value.stream is not self.stream:
                value.stream.synchronize()
            if self._owns(value):  # our own previous output: copy it, since this run overwrites it
                cuda.memcpy_dtod_async(buf.ptr, value.ptr, value.nbytes, self.stream)
                return value.shape, buf.ptr
            return value.shape, value.ptr
        array = np.ascontiguousarray(value, dtype=dtype)
        if array.nbytes:
            if self.pinned_staging:
                if name not in self._staging:
                    self._staging[name] = PinnedStaging(buf.nbytes)
                self._staging[name].copy(array, buf.ptr, self.stream)
            else:
                cuda.memcpy_htod_async(buf.ptr, array, self.stream)
        return tuple(array.shape), buf.ptr

    def _infer(self, feeds: Mapping[str, Any], axes: Dict[str, int]) -> Dict[str, Any]:
        shapes = {n: _shape_of(feeds[n]) for n in self.spec.input_names}
        self._set_profile(choose_profile(self._profiles, shapes))
        ctx = self._context
        foreign = {id(v.stream): v.stream for v in feeds.values()
                   if isinstance(v, DeviceTensor) and v.stream is not None and v.stream is not self.stream}
        for name in self.spec.input_names:
            shape, ptr = self._bind_input(name, feeds[name])
            if not ctx.set_input_shape(name, shape):
                raise RuntimeError(f"TensorRT rejected shape {shape} for input {name!r}")
            if not ctx.set_tensor_address(name, ptr):
                raise RuntimeError(f"TensorRT rejected the address of input {name!r}")
        results: Dict[str, Any] = {}
        for name in self._outputs:
            buf = self._buffers[name]
            shape = tuple(int(d) for d in ctx.get_tensor_shape(name))
            nbytes = _volume(shape) * self._dtypes[name].itemsize
            if any(d < 0 for d in shape) or nbytes > buf.nbytes:
                raise RuntimeError(
                    f"output {name!r} of {self.spec.name!r} has shape {shape}, which does not fit "
                    f"its {buf.nbytes}-byte buffer"
                )
            if not ctx.set_tensor_address(name, buf.ptr):
                raise RuntimeError(f"TensorRT rejected the address of output {name!r}")
            buf.version += 1  # older views of this buffer become stale
            results[name] = DeviceTensor(buf.ptr, shape, self._dtypes[name], owner=buf,
                                         stream=self.stream)
        if not ctx.execute_async_v3(self.stream.ptr):
            raise RuntimeError(f"TensorRT execute_async_v3 failed for {self.spec.name!r} (see its log)")
        if foreign:
            # This run reads memory that another stream's work writes next (that runner's next run,
            # a reuse of its pooled upload): that stream waits for this run on the device.
            if self._ran is None:
                self._ran = cuda.Event()
            self._ran.record(self.stream)
            for stream in foreign.values():
                stream.wait(self._ran)
        return {n: results[n] for n in self.spec.output_names}

    # host / device values -------------------------------------------------------------
    def to_host(self, value: Any) -> np.ndarray:
        """NumPy copy of a DeviceTensor (synchronises the stream); arrays pass through."""
        if isinstance(value, DeviceTensor):
            if self.stream is None:
                raise RuntimeError(f"tensorrt runner for {self.spec.name!r} is not active")
            return cuda.to_host(value, self.stream)
        return np.asarray(value)

    def keep(self, value: Any) -> Any:
        """A device-to-device copy of one of this runner's outputs (their buffers are overwritten
        by the next ``infer``), held as :meth:`upload` 's; other values pass through."""
        if not (isinstance(value, DeviceTensor) and self._owns(value)):
            return value
        value.check_valid()
        kept = self._uploads.view(value.shape, value.dtype, self.stream)
        if value.nbytes:
            cuda.memcpy_dtod_async(kept.ptr, value.ptr, value.nbytes, self.stream)
        return kept

    def upload(self, array: np.ndarray) -> DeviceTensor:
        """A device copy of ``array`` (float32) in a buffer of the runner's pool, back in the pool
        when the returned view is dropped (a frame's uploads are reused by the next frame's,
        no device memory piles up), freed at ``deactivate``."""
        if not self.is_active:
            raise RuntimeError(f"tensorrt runner for {self.spec.name!r} must be active to upload")
        host = np.ascontiguousarray(array, dtype=np.float32)
        tensor = self._uploads.view(host.shape, host.dtype, self.stream)
        if host.nbytes:
            cuda.memcpy_htod_async(tensor.ptr, host, self.stream)
        return tensor
