"""Run the FP32 pipeline over calibration episodes and record every stage's real inputs.

The runners of a :class:`runtime.pipeline.FewShotSegmenter` are wrapped so
that each ``infer(feeds)`` call also stores a host copy of its feeds. What the
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
from runtime.fileio import atomic_path, write_json_atomic
from runtime.manifest import CONSTANTS_NAME, manifest_specs
from runtime.spec import STAGES

RECORD_FORMAT = 1
MARKER = "complete.json"
OUTPUTS = "fp32_outputs.npz"
Samples = Dict[str, List[Dict[str, np.ndarray]]]


class RecordingRunner:
    """Proxy of a stage runner that keeps a host copy of every feed it runs."""

    def __init__(self, inner, sink: List[Dict[str, np.ndarray]]):
        self._inner = inner
        self._sink = sink

    def infer(self, feeds: Mapping[str, Any]) -> Dict[str, Any]:
        self._sink.append({k: np.array(self._inner.to_host(v), dtype=np.float32, copy=True)
                           for k, v in feeds.items()})
        return self._inner.infer(feeds)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def read_manifest_loose(engine_dir: Path) -> dict:
    """``manifest.json`` without the completeness check (the build reads its own draft)."""
    path = Path(engine_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} is missing; pass the build's manifest dict")
    return json.loads(path.read_text())


def open_segmenter(engine_dir: str | Path, manifest: Optional[dict] = None,
                   onnx_overrides: Optional[Mapping[str, str | Path]] = None,
                   runner_overrides: Optional[Mapping[str, Any]] = None, threads: int = 0):
    """A FewShotSegmenter over the folder's ONNX files (ONNX Runtime CPU).

    ``onnx_overrides[stage]`` swaps in another ONNX file (an INT8 or FP16
    variant); ``runner_overrides[stage]`` swaps in a ready runner.
    ``manifest`` defaults to the folder's manifest.json (read without the
    "complete" check, so the build can call this before it writes it).
    """
    from runtime.backends.onnxruntime import OnnxRuntimeStageRunner
    from runtime.pipeline import FewShotSegmenter

    engine_dir = Path(engine_dir)
    manifest = manifest if manifest is not None else read_manifest_loose(engine_dir)
    specs = manifest_specs(manifest)
    onnx_overrides = dict(onnx_overrides or {})
    runners = dict(runner_overrides or {})
    for s in STAGES:
        if s in runners:
            continue
        path = onnx_overrides.get(s) or engine_dir / manifest["stages"][s]["onnx"]["file"]
        runners[s] = OnnxRuntimeStageRunner(specs[s], path, threads, ["CPUExecutionProvider"]).activate()
    with np.load(engine_dir / CONSTANTS_NAME) as z:
        constants = {k: z[k] for k in z.files}
    return FewShotSegmenter(runners, manifest, constants)


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


def cache_key(engine_dir: Path, manifest: dict, episodes: Sequence[Episode]) -> str:
    h = hashlib.sha256(f"record-v{RECORD_FORMAT}".encode())
    for s in STAGES:
        h.update(manifest["stages"][s]["onnx"]["sha256"].encode())
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


def record_stage_inputs(engine_dir: str | Path, episodes: Sequence[Episode],
                        cache_dir: Optional[str | Path] = None, manifest: Optional[dict] = None,
                        log: Callable[[str], None] = print, progress: bool = True,
                        threads: int = 0):
    """Run the FP32 ONNX pipeline over ``episodes``; return ``(samples, fp32_logits)``.

    ``samples[stage]`` is a list of feed dicts (the stage's real inputs, in
    call order); ``fp32_logits`` is one ``[H,W]`` array per target, episodes
    in order. Reuses a complete cache for the same models and episodes.
    """
    if not episodes:
        raise CalibrationDataError("no calibration episodes given")
    engine_dir = Path(engine_dir)
    manifest = manifest if manifest is not None else read_manifest_loose(engine_dir)
    cache_dir = Path(cache_dir) if cache_dir else engine_dir / "calib_cache"
    key = cache_key(engine_dir, manifest, episodes)
    cached = load_cache(cache_dir, key)
    if cached is not None:
        log(f"[calib] reusing recorded stage inputs from {cache_dir}")
        return cached

    seg = open_segmenter(engine_dir, manifest, threads=threads)
    samples: Samples = {s: [] for s in STAGES}
    seg.engines.runners = {s: RecordingRunner(r, samples[s]) for s, r in seg.runners.items()}
    logits: List[np.ndarray] = []
    try:
        for ep in _progress(episodes, len(episodes), "calib: FP32 pass", progress):
            logits += run_episode(seg, ep)
    finally:
        seg.close()
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
