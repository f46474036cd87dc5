"""Run the FP32 pipeline over a calibration workload and record every stage's real inputs.

The runners of an FP32 session are wrapped
(:meth:`~runtime.core.session.EngineSession.wrapped`) so that each
``infer(feeds)`` call also stores a host copy of its feeds. What the
quantizer calibrates on is therefore exactly what each stage sees in
deployment (for few-shot: references through encoder, decoder and memory
encoder, targets through encoder, memory attention and decoder; for stock
SAM2: clicks and boxes through the decoder, tracking memories through memory
attention), not random data. The workloads are :mod:`calib.workloads`.

Cache (default ``ENGINE_DIR/calib_cache``): one ``<stage>.npz`` per stage plus
``fp32_outputs.npz`` (the FP32 logits, the reference for end-to-end IoU),
each written atomically, and ``complete.json`` written last. ``complete.json``
holds a key over the FP32 ONNX hashes and the workload's data; it is removed
before a new recording starts, so an interrupted run is never taken for a
complete one, and a cache made from other models or data is not reused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from calib.episodes import CalibrationDataError
from runtime.core.fileio import atomic_path, write_json_atomic
from runtime.core.folder import ModelFolder

RECORD_FORMAT = 3  # 3: VideoTracker resizes uint8 frames as sam2's video loader (Pillow's bicubic)
MARKER = "complete.json"
OUTPUTS = "fp32_outputs.npz"
Samples = Dict[str, List[Dict[str, np.ndarray]]]


class RecordingRunner:
    """Proxy of a stage runner that keeps a host copy of every feed it runs (dtype kept)."""

    def __init__(self, inner, sink: List[Dict[str, np.ndarray]]):
        self._inner = inner
        self._sink = sink

    def infer(self, feeds: Mapping[str, Any]) -> Dict[str, Any]:
        self._sink.append({k: np.array(self._inner.to_host(v), copy=True) for k, v in feeds.items()})
        return self._inner.infer(feeds)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def open_session(folder: ModelFolder, variants: Optional[Mapping[str, Any]] = None, threads: int = 0):
    """An :class:`EngineSession` over the folder's FP32 ONNX files on ONNX Runtime's CPU provider.

    ``variants[stage]`` swaps in another ONNX file (a path: an INT8 or FP16
    variant) or a ready runner. The folder may still be building (its
    manifest in memory). Closing the session closes every runner, given ones too.
    """
    from runtime.core.backends.onnxruntime import OnnxRuntimeStageRunner
    from runtime.core.session import EngineSession

    variants = dict(variants or {})
    runners, created = {}, []
    try:
        for s in folder.specs:
            v = variants.get(s)
            if v is not None and hasattr(v, "infer"):
                runners[s] = v
                continue
            model = v if v is not None else folder.read_verified(folder.file_record(s, "fp32"))
            runners[s] = OnnxRuntimeStageRunner(folder.specs[s], model, threads, ["CPUExecutionProvider"],
                                                memory="off").activate()
            created.append(runners[s])
        return EngineSession(folder, runners, folder.load_constants())
    except BaseException:
        for r in created:
            r.deactivate()
        raise


def cache_key(folder: ModelFolder, workload) -> str:
    h = hashlib.sha256(f"record-v{RECORD_FORMAT}".encode())
    for s in folder.specs:
        h.update(folder.file_record(s, "fp32").sha256.encode())
    h.update(workload.fingerprint().encode())
    return h.hexdigest()


def _save_samples(path: Path, samples: List[Dict[str, np.ndarray]]) -> None:
    arrays = {f"{i:05d}/{k}": v for i, feeds in enumerate(samples) for k, v in feeds.items()}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


class StoredSamples(Sequence):
    """The feed dicts stored in one ``.npz`` of the cache, read from disk on access (not held in memory)."""

    def __init__(self, path: Path):
        self._z = np.load(path)
        keys: Dict[int, List[str]] = {}
        for key in self._z.files:
            i, name = key.split("/", 1)
            keys.setdefault(int(i), []).append(name)
        self._keys = [(i, keys[i]) for i in sorted(keys)]

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i, names = self._keys[index]
        return {n: self._z[f"{i:05d}/{n}"] for n in names}


def _load_samples(path: Path) -> StoredSamples:
    return StoredSamples(path)


def load_cache(cache_dir: Path, key: str, stages):
    """(samples, fp32 outputs) if ``cache_dir`` holds a complete recording for ``key``, else None.

    The samples are :class:`StoredSamples` (read on access); the outputs are loaded.
    """
    marker = cache_dir / MARKER
    try:
        info = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if info.get("key") != key or info.get("format") != RECORD_FORMAT:
        return None
    try:
        samples = {s: _load_samples(cache_dir / f"{s}.npz") for s in stages}
        outs = _load_samples(cache_dir / OUTPUTS)
    except (OSError, ValueError, KeyError):
        return None
    if any(len(samples[s]) != info["counts"][s] for s in stages):
        return None
    return samples, [outs[i]["logits"] for i in range(len(outs))]


def record_stage_inputs(folder: ModelFolder, workload, cache_dir: Optional[str | Path] = None,
                        log: Callable[[str], None] = print, threads: int = 0):
    """Run the FP32 ONNX pipeline over ``workload``; return ``(samples, fp32_logits)``.

    ``samples[stage]`` is a list of feed dicts (the stage's real inputs, in
    call order); ``fp32_logits`` is the workload's logits, in its order.
    Reuses a complete cache for the same models and data.
    """
    cache_dir = Path(cache_dir) if cache_dir else folder.path / "calib_cache"
    stages = list(folder.specs)
    key = cache_key(folder, workload)
    cached = load_cache(cache_dir, key, stages)
    if cached is not None:
        log(f"[calib] reusing recorded stage inputs from {cache_dir}")
        return cached

    samples: Samples = {s: [] for s in stages}
    with open_session(folder, threads=threads) as session, \
            session.wrapped(lambda s, r: RecordingRunner(r, samples[s])):
        logits = workload.run(session)
    if not logits:
        raise CalibrationDataError("the calibration data gave no mask to compare (no target, prompt or frame)")
    # Write: marker gone first, data files atomically, marker last.
    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / MARKER).unlink(missing_ok=True)
    for s in stages:
        _save_samples(cache_dir / f"{s}.npz", samples[s])
    _save_samples(cache_dir / OUTPUTS, [{"logits": x} for x in logits])
    write_json_atomic(cache_dir / MARKER, {"format": RECORD_FORMAT, "key": key,
                                           "counts": {s: len(samples[s]) for s in stages}})
    log(f"[calib] recorded {', '.join(f'{s} x{len(v)}' for s, v in samples.items())} into {cache_dir}")
    # From here on the samples are read from the cache on access: calibration holds one at a time.
    return load_cache(cache_dir, key, stages)
