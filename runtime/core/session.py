"""An opened model folder: its runners (one per stage), constants and specs, with a lifecycle.

Every product (:class:`~runtime.sam2.fewshot.FewShotSegmenter`,
:class:`~runtime.sam2.predictor.ImagePredictor`,
:class:`~runtime.sam2.tracker.VideoTracker`,
:class:`~runtime.dense.segmenter.DenseSegmenter`,
:class:`~runtime.dense.features.FeatureExtractor`) runs on a session. A
product made with ``Product.load(folder)`` owns its session and closes it;
a product made with ``Product(session)`` shares it, so two video streams (two
trackers) or a segmenter and a predictor hold one set of runners::

    with EngineSession.open("engines/tiny", product="VideoTracker") as session:
        a, b = VideoTracker(session), VideoTracker(session)

Per-stream state (references, memories) lives in the products, never here.
Sharing a session between *threads* is safe on ONNX Runtime (its sessions
run concurrently); TensorRT runners own their output buffers and stream, so
:attr:`EngineSession.lock` serialises whole product calls there (the public
methods of every product are :func:`serialized`).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Sequence, Tuple

import numpy as np

from runtime.core.backends import close_runners, edge_stages_to_run, open_runners, resolve_backend
from runtime.core.backends.base import StageRunner
from runtime.core.folder import Manifest, ModelFolder, kinds_for, wrong_kind_message
from runtime.core.spec import StageSpec
from runtime.errors import ModelFolderError


class EngineSession:
    """Runners for the stages of one model folder (see the module docstring)."""

    def __init__(self, folder: ModelFolder, runners: Mapping[str, StageRunner],
                 constants: Optional[Mapping[str, np.ndarray]] = None):
        self.folder = folder
        self.runners: Dict[str, StageRunner] = dict(runners)
        self.constants: Dict[str, np.ndarray] = {k: np.asarray(v) for k, v in (constants or {}).items()}
        self.closed = False
        self.lock = threading.RLock() if self.backend == "tensorrt" else contextlib.nullcontext()

    @classmethod
    def open(cls, path: str | Path, *, product: Optional[str] = None, kinds: Optional[Sequence[str]] = None,
             backend: str = "auto", threads: int = 0, providers: Optional[Sequence[str]] = None,
             cpu_int8: str = "auto", variants: Optional[Mapping[str, str]] = None,
             memory: str = "arena", preprocess: str = "auto", postprocess: str = "auto",
             edges: Optional[Sequence[str]] = None, io_binding: Optional[bool] = None) -> "EngineSession":
        """Open a folder made by ``python -m export.build`` (of a kind ``product`` runs).

        ``backend``: "auto" | "onnxruntime" | "tensorrt"; ``cpu_int8``: whether
        ONNX Runtime on the CPU runs the folder's dynamic-INT8 files
        (:mod:`runtime.core.backends`); ``variants`` forces ONNX variants per stage;
        ``memory``: ONNX Runtime's CPU memory mode, "arena" | "shared" | "off"
        (``OnnxRuntimeStageRunner``); ``preprocess`` / ``postprocess``: where
        frames become the model input / mask logits become frame-size masks,
        "auto" | "backend" | "host" (:func:`~runtime.core.backends.edge_stages_to_run`); ``edges``:
        the edge stages to open (a product's :attr:`Product.EDGES`; None: all of the folder's);
        ``io_binding``: ONNX Runtime's IOBinding (``OnnxRuntimeStageRunner``; None: on GPU providers).
        """
        folder = ModelFolder.open(path, kinds=kinds, product=product)
        constants = folder.load_constants() if folder.manifest.constants else {}
        kind = resolve_backend(backend, folder, tuple(folder.specs))
        specs = {**folder.specs, **edge_stages_to_run(folder, kind, providers,
                                                        {"preprocess": preprocess, "postprocess": postprocess}, edges)}
        runners = open_runners(folder, specs, kind, threads=threads, providers=providers,
                               cpu_int8=cpu_int8, variants=variants, memory=memory, io_binding=io_binding)
        return cls(folder, runners, constants)

    # ----------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Release every runner (idempotent)."""
        if not self.closed:
            close_runners(self.runners)
            self.closed = True

    def __enter__(self) -> "EngineSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def wrapped(self, wrap: Callable[[str, StageRunner], Any]) -> Iterator["EngineSession"]:
        """Run with every runner replaced by ``wrap(stage, runner)`` (e.g. a recording proxy); restored after."""
        original = dict(self.runners)
        self.runners = {s: wrap(s, r) for s, r in original.items()}
        try:
            yield self
        finally:
            self.runners = original

    # ------------------------------------------------------------------- facts
    @property
    def manifest(self) -> Manifest:
        return self.folder.manifest

    @property
    def specs(self) -> Dict[str, StageSpec]:
        return self.folder.specs

    @property
    def backend(self) -> str:
        return next(iter(self.runners.values())).backend_name

    @property
    def stage_files(self) -> Dict[str, str]:
        """The file each stage runs from, e.g. ``memory_attention.cpu-int8.onnx``."""
        return {s: r.source for s, r in self.runners.items()}

    def variant_stages(self, variant: str) -> Tuple[str, ...]:
        """The stages running their ``variant`` file (e.g. ``"cpu-int8"``), in stage order."""
        return tuple(s for s, name in self.stage_files.items()
                     if variant in self.folder.stage(s).files and name == self.folder.stage(s).files[variant].file)

    @property
    def stage_calls(self) -> Dict[str, int]:
        """How often each stage ran since the session opened (tests check caching with it)."""
        return {s: r.calls for s, r in self.runners.items()}

    @property
    def engine_seconds(self) -> float:
        """Wall time spent inside the backends' run calls since the session opened (all stages);
        a call's wall time minus its growth is host work."""
        return sum(r.seconds for r in self.runners.values())

    def axis_max(self, axis: str) -> int:
        """Largest size of a dynamic axis the engines were built for."""
        return self.manifest.axis_max(axis)


def serialized(method):
    """A product method that holds its session's :attr:`~EngineSession.lock` while it runs
    (a no-op on ONNX Runtime; on TensorRT, one call at a time on the shared buffers and stream)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self.session.lock:
            return method(self, *args, **kwargs)
    return run


class Product:
    """Base of the classes users hold (segmenters, predictor, tracker, feature extractor).

    A product runs on an :class:`EngineSession` of a folder kind it can run
    (:data:`runtime.core.folder.KINDS`); ``load`` opens a session it owns and
    closes; a product made from a session shares it. Subclasses release their
    own per-stream state in :meth:`_release`. ``EDGES``: the folder's edge
    stages the product uses (the others are not opened by :meth:`load`).
    """

    EDGES: Tuple[str, ...] = ()

    def __init__(self, session: EngineSession):
        kinds = kinds_for(type(self).__name__)
        kind = session.manifest.kind
        if kind not in kinds:
            raise ModelFolderError(wrong_kind_message(session.folder.path, kind, type(self).__name__, kinds))
        self.session = session
        self._owns_session = False

    @classmethod
    def load(cls, path: str | Path, *, backend: str = "auto", threads: int = 0,
             providers: Optional[Sequence[str]] = None, cpu_int8: str = "auto", memory: str = "arena",
             preprocess: str = "auto", postprocess: str = "auto", **options):
        """Open the model folder ``path`` (made by ``python -m export.build``) in a session of its own.

        ``backend``, ``threads``, ``providers``, ``cpu_int8``, ``memory``,
        ``preprocess``, ``postprocess``: see :meth:`EngineSession.open`; ``options`` go to the class.
        """
        session = EngineSession.open(path, product=cls.__name__, backend=backend, threads=threads,
                                     providers=providers, cpu_int8=cpu_int8, memory=memory,
                                     preprocess=preprocess, postprocess=postprocess, edges=cls.EDGES)
        try:
            product = cls(session, **options)
        except BaseException:
            session.close()
            raise
        product._owns_session = True
        return product

    @property
    def backend(self) -> str:
        return self.session.backend

    @property
    def stage_calls(self) -> Dict[str, int]:
        """How often each stage ran since the session opened (tests check caching with it)."""
        return self.session.stage_calls

    def _release(self) -> None:
        """Drop per-stream state (references, memories, cached images)."""

    def close(self) -> None:
        """Forget this product's state; close the session if :meth:`load` opened it."""
        self._release()
        if self._owns_session:
            self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
