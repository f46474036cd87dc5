"""ONNX Runtime stage runner: CPU, or CUDA / TensorRT execution providers with onnxruntime-gpu."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

from runtime.backends.base import BackendUnavailable, StageRunner
from runtime.spec import StageSpec

# Preference order when providers=None: the fastest one this onnxruntime build has.
_PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


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
    """Runs one ONNX file; NumPy in, NumPy out.

    Session options are set deliberately: all graph optimisations, intra-op
    threads = ``threads`` (0 lets ORT use one per physical core), sequential
    execution (the graphs are chains; parallel mode only adds scheduling cost).
    """

    backend_name = "onnxruntime"

    def __init__(self, spec: StageSpec, onnx_path: str | Path, threads: int = 0,
                 providers: Optional[Sequence[str]] = None):
        super().__init__(spec)
        self.onnx_path = Path(onnx_path)
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
        providers = self.providers or default_providers()
        missing = [p for p in providers if p not in ort.get_available_providers()]
        if missing:
            raise BackendUnavailable(
                f"onnxruntime {ort.__version__} lacks execution providers {missing}; "
                f"available: {ort.get_available_providers()} (install onnxruntime-gpu for CUDA)"
            )
        if not self.onnx_path.is_file():
            raise FileNotFoundError(f"{self.onnx_path} is missing; re-run export.build")
        self.session = ort.InferenceSession(os.fspath(self.onnx_path), so, providers=providers)
        names = [i.name for i in self.session.get_inputs()]
        if tuple(names) != self.spec.input_names:
            raise ValueError(
                f"{self.onnx_path.name}: graph inputs {names} do not match the stage "
                f"description {list(self.spec.input_names)}; the file is from another "
                "version of the exporter: rebuild the folder"
            )

    def _deactivate(self) -> None:
        self.session = None

    def _infer(self, feeds: Mapping[str, Any]) -> Dict[str, Any]:
        arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feeds.items()}
        outs = self.session.run(list(self.spec.output_names), arrays)
        return dict(zip(self.spec.output_names, outs))
