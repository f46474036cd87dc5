"""ONNX Runtime stage runner: CPU, or the CUDA execution provider with onnxruntime-gpu."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np

from runtime.core.backends.base import StageRunner
from runtime.core.spec import StageSpec
from runtime.errors import BackendUnavailable, ModelFolderError

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


class OnnxRuntimeStageRunner(StageRunner):
    """Runs one ONNX model (its bytes, as hashed by the model folder, or a path); NumPy in, NumPy out.

    Session options are set deliberately: all graph optimisations, intra-op
    threads = ``threads`` (0 lets ORT use one per physical core), sequential
    execution (the graphs are chains; parallel mode only adds scheduling cost).
    ``arena=False`` turns ONNX Runtime's CPU memory arena off: a session then
    keeps no memory between runs (slower allocation; for tools that hold many
    sessions, such as calibration). The graph's inputs and outputs must match
    the stage spec (names, dtypes).
    """

    backend_name = "onnxruntime"

    def __init__(self, spec: StageSpec, model: Union[bytes, str, Path], threads: int = 0,
                 providers: Optional[Sequence[str]] = None, source: str = "", arena: bool = True):
        super().__init__(spec, source or (Path(model).name if not isinstance(model, bytes) else spec.name))
        self.model = model
        self.arena = arena
        self.threads = threads
        self.providers = list(providers) if providers else None
        self.session = None

    def _activate(self) -> None:
        ort = _ort()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = self.threads or 0
        so.log_severity_level = 3
        if not self.arena:
            so.enable_cpu_mem_arena = False
            so.enable_mem_pattern = False
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
        outs = self.session.run(list(self.spec.output_names), {k: np.asarray(v) for k, v in feeds.items()})
        return dict(zip(self.spec.output_names, outs))
