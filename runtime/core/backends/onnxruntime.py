"""ONNX Runtime stage runner: CPU, or the CUDA execution provider with onnxruntime-gpu.

On a GPU provider the runner binds its inputs and outputs (ONNX Runtime's
IOBinding): outputs stay on the device as ``OrtValue`` s, and a stage fed
another stage's ``OrtValue`` reads it where it is, so the chain of stages makes
no host round trip; :meth:`OnnxRuntimeStageRunner.to_host` copies a value back
when the host needs it. On the CPU provider NumPy arrays go in and out.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np

from runtime.core.backends.base import StageRunner
from runtime.core.spec import StageSpec
from runtime.errors import BackendUnavailable, ModelFolderError, UsageError

# Providers whose stages bind their outputs on the device (IOBinding), and that device.
DEVICE_PROVIDERS = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda"}
# Preference order when providers=None: the fastest one this onnxruntime build has.
_PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
# ONNX Runtime's type strings -> NumPy dtype names (those a TensorSpec can have).
ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
             "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


def _ort():
    try:
        import onnxruntime
    except ImportError as e:  # pragma: no cover - onnxruntime is a core dependency
        raise BackendUnavailable(
            "onnxruntime is not installed: pip install onnxruntime (CPU) or onnxruntime-gpu"
        ) from e
    return onnxruntime


def default_providers(exclude_tensorrt: bool = True) -> list:
    """Providers to use when none are given: CUDA if available, else CPU.

    ORT's own TensorRT provider builds engines on first use (minutes); it is
    only used when asked for explicitly.
    """
    available = _ort().get_available_providers()
    chosen = [p for p in _PREFERRED if p in available]
    if exclude_tensorrt:
        chosen = [p for p in chosen if p != "TensorrtExecutionProvider"]
    return chosen or ["CPUExecutionProvider"]


def cpu_provider_only(providers=None) -> bool:
    """Whether ``providers`` (default: :func:`default_providers`) run everything on the host's CPU."""
    return list(providers or default_providers()) == ["CPUExecutionProvider"]


MEMORY_MODES = ("arena", "shared", "off")
_shared_arena = threading.Lock()
_shared_arena_registered = False


def _register_shared_arena(ort) -> None:
    """One CPU arena in ONNX Runtime's environment for every session that asks for it (once per process)."""
    global _shared_arena_registered
    with _shared_arena:
        if not _shared_arena_registered:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
            _shared_arena_registered = True


class OnnxRuntimeStageRunner(StageRunner):
    """Runs one ONNX model (its bytes, as hashed by the model folder, or a path): NumPy in and out, or
    ``OrtValue`` s where its inputs and outputs are bound (``io_binding``).

    Session options are set deliberately: all graph optimisations, intra-op
    threads = ``threads`` (0 lets ORT use one per physical core), sequential
    execution (the graphs are chains; parallel mode only adds scheduling cost).
    ``memory`` (:data:`MEMORY_MODES`) sets how the CPU memory of the runs is
    held: ``"arena"`` (ONNX Runtime's default: an arena per session, each
    growing to its stage's peak and keeping it), ``"shared"`` (one arena for
    every session of the process, registered once with ONNX Runtime's
    environment: the stages run one after another, so it grows to the largest
    stage's peak instead of the sum), ``"off"`` (no arena and no memory
    patterns: nothing kept between runs, allocation on every run; for tools
    that hold many sessions, such as calibration). Measured in
    ``bench/reports/frame-budget.md``. The graph's inputs and outputs must
    match the stage spec (names, dtypes). ``io_binding``: bind inputs and
    outputs (module docstring); None: on GPU providers (outputs on the device),
    off on the CPU provider; True on the CPU provider binds host ``OrtValue`` s
    (the same code path, for tests).
    """

    backend_name = "onnxruntime"

    def __init__(self, spec: StageSpec, model: Union[bytes, str, Path], threads: int = 0,
                 providers: Optional[Sequence[str]] = None, source: str = "", memory: str = "arena",
                 io_binding: Optional[bool] = None):
        super().__init__(spec, source or (Path(model).name if not isinstance(model, bytes) else spec.name))
        self.model = model
        if memory not in MEMORY_MODES:
            raise UsageError(f"unknown onnxruntime memory mode {memory!r}; choose one of {', '.join(MEMORY_MODES)}")
        self.memory = memory
        self.threads = threads
        self.providers = list(providers) if providers else None
        self.io_binding = io_binding
        self.device: Optional[str] = None  # where bound outputs live ("cuda", "cpu"); None: not bound
        self._ort_value = _ort().OrtValue
        self.session = None

    def _activate(self) -> None:
        ort = _ort()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = self.threads or 0
        so.log_severity_level = 3
        if self.memory == "off":
            so.enable_cpu_mem_arena = False
            so.enable_mem_pattern = False
        elif self.memory == "shared":
            _register_shared_arena(ort)
            so.add_session_config_entry("session.use_env_allocators", "1")
        providers = self.providers or default_providers()
        missing = [p for p in providers if p not in ort.get_available_providers()]
        if missing:
            raise BackendUnavailable(
                f"onnxruntime {ort.__version__} lacks execution providers {missing}; "
                f"available: {ort.get_available_providers()} (install onnxruntime-gpu for CUDA)"
            )
        model = self.model if isinstance(self.model, bytes) else os.fspath(self.model)
        if not isinstance(model, bytes) and not Path(model).is_file():
            raise ModelFolderError(f"{model} is missing; re-run export.build")
        self.session = ort.InferenceSession(model, so, providers=providers)
        self._check_graph_io()
        device = DEVICE_PROVIDERS.get(self.session.get_providers()[0])
        bind = device is not None if self.io_binding is None else self.io_binding
        self.device = (device or "cpu") if bind else None

    @property
    def computes_on_cpu(self) -> bool:
        return cpu_provider_only(self.session.get_providers() if self.is_active else self.providers)

    def _check_graph_io(self) -> None:
        def io(items):
            return [(i.name, ORT_TYPES.get(i.type, i.type)) for i in items]

        got_in, got_out = io(self.session.get_inputs()), io(self.session.get_outputs())
        want_in = [(t.name, t.dtype) for t in self.spec.inputs]
        want_out = [(t.name, t.dtype) for t in self.spec.outputs]
        if got_in != want_in or got_out != want_out:
            raise ModelFolderError(
                f"{self.source}: graph inputs {got_in} / outputs {got_out} do not match the stage "
                f"description {want_in} / {want_out}; the file is from another version of the "
                "exporter: rebuild the folder")

    def _deactivate(self) -> None:
        self.session = None

    def _infer(self, feeds: Mapping[str, Any], axes: Dict[str, int]) -> Dict[str, Any]:
        if self.device is None:
            outs = self.session.run(list(self.spec.output_names), {k: self.to_host(v) for k, v in feeds.items()})
            return dict(zip(self.spec.output_names, outs))
        binding = self.session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, self._ort_value):
                binding.bind_ortvalue_input(name, value)  # where it is: another stage's output, an upload
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self.spec.output_names:
            binding.bind_output(name, self.device)
        self.session.run_with_iobinding(binding)
        return dict(zip(self.spec.output_names, binding.get_outputs()))

    def describe(self, value: Any):
        if isinstance(value, self._ort_value):
            return tuple(value.shape()), ORT_TYPES.get(value.data_type(), value.data_type())
        return super().describe(value)

    def to_host(self, value: Any) -> np.ndarray:
        return value.numpy() if isinstance(value, self._ort_value) else np.asarray(value)

    def upload(self, array: np.ndarray) -> Any:
        if self.device is None:
            return super().upload(array)
        if self.device == "cpu":  # a CPU OrtValue shares the array's memory: give it its own copy
            host = np.array(array, dtype=np.float32, order="C")
        else:  # a device OrtValue holds a device copy: no host copy first
            host = np.ascontiguousarray(array, dtype=np.float32)
        return self._ort_value.ortvalue_from_numpy(host, self.device, 0)
