"""Run the FP32 pipeline over calibration episodes and record every stage's real inputs.

The runners of a :class:`runtime.sam2.fewshot.FewShotSegmenter`'s session are
wrapped (:meth:`~runtime.core.session.EngineSession.wrapped`) so that each
``infer(feeds)`` call also stores a host copy of its feeds. What the
quantizer calibrates on is therefore exactly what each stage sees in
deployment (references through the encoder, decoder and memory encoder;
targets through the encoder, memory attention and decoder), not random data.

Cache (default ``ENGINE_DIR/calib_cache``): one ``<stage>.npz`` per stage plus
``fp32_outputs.npz`` (the FP32 target logits, the reference for end-to-end IoU),
each written atomically, and ``complete.json`` written last. ``complete.json``
holds a key over the FP32 ONNX hashes and the episodes' pixels; it is removed
before a new recording starts, so an interrupted run is never taken for a
complete one, and a cache made from other models or data is not reused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from calib.episodes import CalibrationDataError, Episode
from runtime.core.fileio import atomic_path, write_json_atomic
from runtime.core.folder import ModelFolder
from runtime.sam2.spec import STAGES

RECORD_FORMAT = 1
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


def open_segmenter(folder: ModelFolder, variants: Optional[Mapping[str, Any]] = None, threads: int = 0):
    """A FewShotSegmenter over the folder's FP32 ONNX files on ONNX Runtime's CPU provider.

    ``variants[stage]`` swaps in another ONNX file (a path: an INT8 or FP16
    variant) or a ready runner. The folder may still be building (its
    manifest in memory); the segmenter owns its session (close it).
    """
    from runtime.core.backends.onnxruntime import OnnxRuntimeStageRunner
    from runtime.core.session import EngineSession
    from runtime.sam2.fewshot import FewShotSegmenter

    variants = dict(variants or {})
    runners, created = {}, []
    try:
        for s in STAGES:
            v = variants.get(s)
            if v is not None and hasattr(v, "infer"):
                runners[s] = v
                continue
            model = v if v is not None else folder.read_verified(folder.file_record(s, "fp32"))
            runners[s] = OnnxRuntimeStageRunner(folder.specs[s], model, threads, ["CPUExecutionProvider"]).activate()
            created.append(runners[s])
        session = EngineSession(folder, runners, folder.load_constants())
    except BaseException:
        for r in created:
            r.deactivate()
        raise
    seg = FewShotSegmenter(session)
    seg._owns_session = True
    return seg


def run_episode(seg, ep: Episode) -> List[np.ndarray]:
    """Add the episode's references, segment its targets; the target logits ``[H,W]``."""
    seg.clear()
    for img, mask in ep.references:
        seg.add_reference(img, mask, concept=ep.concept)
    return [seg.segment(t)[ep.concept].logits for t in ep.targets]


def _progress(it, total: int, desc: str, enabled: bool):
    if not enabled:
        return it
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return it
    return tqdm(it, total=total, desc=desc, unit="episode", leave=False)


def cache_key(folder: ModelFolder, episodes: Sequence[Episode]) -> str:
    h = hashlib.sha256(f"record-v{RECORD_FORMAT}".encode())
    for s in STAGES:
        h.update(folder.file_record(s, "fp32").sha256.encode())
    for ep in episodes:
        h.update(ep.fingerprint().encode())
    return h.hexdigest()


def _save_samples(path: Path, samples: List[Dict[str, np.ndarray]]) -> None:
    arrays = {f"{i:05d}/{k}": v for i, feeds in enumerate(samples) for k, v in feeds.items()}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def _load_samples(path: Path) -> List[Dict[str, np.ndarray]]:
    out: Dict[int, Dict[str, np.ndarray]] = {}
    with np.load(path) as z:
        for key in z.files:
            i, name = key.split("/", 1)
            out.setdefault(int(i), {})[name] = z[key]
    return [out[i] for i in sorted(out)]


def load_cache(cache_dir: Path, key: str):
    """(samples, fp32 outputs) if ``cache_dir`` holds a complete recording for ``key``, else None."""
    marker = cache_dir / MARKER
    try:
        info = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if info.get("key") != key or info.get("format") != RECORD_FORMAT:
        return None
    try:
        samples = {s: _load_samples(cache_dir / f"{s}.npz") for s in STAGES}
        outs = _load_samples(cache_dir / OUTPUTS)
    except (OSError, ValueError, KeyError):
        return None
    if any(len(samples[s]) != info["counts"][s] for s in STAGES):
        return None
    return samples, [o["logits"] for o in outs]


def record_stage_inputs(folder: ModelFolder, episodes: Sequence[Episode],
                        cache_dir: Optional[str | Path] = None,
                        log: Callable[[str], None] = print, progress: bool = True,
                        threads: int = 0):
    """Run the FP32 ONNX pipeline over ``episodes``; return ``(samples, fp32_logits)``.

    ``samples[stage]`` is a list of feed dicts (the stage's real inputs, in
    call order); ``fp32_logits`` is one ``[H,W]`` array per target, episodes
    in order. Reuses a complete cache for the same models and episodes.
    """
    if not episodes:
        raise CalibrationDataError("no calibration episodes given")
    cache_dir = Path(cache_dir) if cache_dir else folder.path / "calib_cache"
    key = cache_key(folder, episodes)
    cached = load_cache(cache_dir, key)
    if cached is not None:
        log(f"[calib] reusing recorded stage inputs from {cache_dir}")
        return cached

    samples: Samples = {s: [] for s in STAGES}
    logits: List[np.ndarray] = []
    with open_segmenter(folder, threads=threads) as seg, \
            seg.session.wrapped(lambda s, r: RecordingRunner(r, samples[s])):
        for ep in _progress(episodes, len(episodes), "calib: FP32 pass", progress):
            logits += run_episode(seg, ep)
    # Write: marker gone first, data files atomically, marker last.
    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / MARKER).unlink(missing_ok=True)
    for s in STAGES:
        _save_samples(cache_dir / f"{s}.npz", samples[s])
    _save_samples(cache_dir / OUTPUTS, [{"logits": x} for x in logits])
    write_json_atomic(cache_dir / MARKER, {
        "format": RECORD_FORMAT, "key": key, "episodes": len(episodes),
        "counts": {s: len(samples[s]) for s in STAGES}})
    log(f"[calib] recorded {', '.join(f'{s} x{len(v)}' for s, v in samples.items())} "
        f"from {len(episodes)} episode(s) into {cache_dir}")
    return samples, logits
