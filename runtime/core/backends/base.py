"""The small interface every inference backend implements.

A *stage runner* executes one exported sub-network (one ONNX file or one
TensorRT engine). It follows Polygraphy's runner lifecycle: ``activate()``
acquires sessions/contexts/buffers, ``deactivate()`` releases them, and the
runner is a context manager. Tensors are always keyed by name, and every
call is checked against the stage's tensor contract
(:meth:`runtime.core.spec.StageSpec.check_feeds`: names, dtypes, shapes,
axis ranges) here, once, for every backend.

Values passed to :meth:`StageRunner.infer` may be NumPy arrays or tensors that
the same backend returned earlier (device tensors for GPU backends), so that
stages chain without host round trips. :meth:`to_host` turns any value into a
NumPy array; :meth:`upload` makes a backend-native copy of a host array (the
array itself where the backend takes host arrays) that lives as long as the
value returned (cached reference memories keep theirs; a frame's feeds go with
the frame).
"""

from __future__ import annotations

import abc
import time
from typing import Any, Dict, Mapping, Tuple

import numpy as np

from runtime.core.spec import StageSpec


def shape_and_dtype(value: Any) -> Tuple[Tuple[int, ...], str]:
    """``(shape, dtype name)`` of a NumPy array or a backend tensor (anything with both)."""
    if isinstance(value, np.ndarray):
        return value.shape, value.dtype.name
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return tuple(value.shape), np.dtype(value.dtype).name
    a = np.asarray(value)
    return a.shape, a.dtype.name


class StageRunner(abc.ABC):
    """Runs one sub-network; inputs and outputs keyed by tensor name."""

    backend_name: str = "abstract"

    def __init__(self, spec: StageSpec, source: str = ""):
        self.spec = spec
        self.source = source  # the file it runs, for messages and reports
        self.is_active = False
        self.calls = 0  # number of infer() calls, for tests and profiling
        self.seconds = 0.0  # wall time inside the backend's run calls (engine time; the rest is host work)

    # lifecycle -------------------------------------------------------------
    def activate(self) -> "StageRunner":
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def __enter__(self) -> "StageRunner":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # inference -------------------------------------------------------------
    def infer(self, feeds: Mapping[str, Any]) -> Dict[str, Any]:
        """Run the stage on ``feeds`` (exactly the spec's inputs, of its dtypes and shapes)."""
        if not self.is_active:
            raise RuntimeError(
                f"{self.backend_name} runner for {self.spec.name!r} is not active; "
                "call activate() or use it as a context manager"
            )
        axes = self.spec.check_feeds({k: self.describe(v) for k, v in feeds.items()})
        self.calls += 1
        t = time.perf_counter()
        try:
            return self._infer(feeds, axes)
        finally:
            self.seconds += time.perf_counter() - t

    @property
    def computes_on_cpu(self) -> bool:
        """Whether the stage runs on the host's CPU (ONNX Runtime's CPU provider), not an accelerator."""
        return False

    def describe(self, value: Any) -> Tuple[Tuple[int, ...], str]:
        """``(shape, dtype name)`` of a value this runner accepts (a host array or its own tensors)."""
        return shape_and_dtype(value)

    def to_host(self, value: Any) -> np.ndarray:
        """A NumPy copy (or view) of a value this runner accepts or returns."""
        return np.asarray(value)

    def keep(self, value: Any) -> Any:
        """``value`` (one of this runner's outputs) in a form that stays valid after the runner's
        next ``infer``, on the backend, without a host round trip. Identity here: ONNX Runtime
        returns fresh arrays (or ``OrtValue`` s) per run; runners that reuse their output
        buffers copy."""
        return value

    def upload(self, array: np.ndarray) -> Any:
        """A backend-native copy of ``array`` that lives as long as the value returned
        (identity on the host)."""
        return np.ascontiguousarray(array, dtype=np.float32)

    @abc.abstractmethod
    def _activate(self) -> None: ...

    @abc.abstractmethod
    def _deactivate(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, feeds: Mapping[str, Any], axes: Dict[str, int]) -> Dict[str, Any]:
        """Run on checked ``feeds``; ``axes`` holds each dynamic axis' value."""
