"""What a build is asked to do (:class:`BuildOptions`), and the steps every builder shares.

``export.build`` fills the options from its command line; tests and scripts
construct them directly. ``None`` means "not given": each builder resolves
it (from the files it reads, or its default) in one place.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from runtime.core.folder import ModelFolder
from runtime.errors import ModelFolderError, UsageError

PRECISIONS = ("fp32", "fp16", "int8")
Log = Callable[[str], None]


@dataclass
class BuildOptions:
    """Every option of ``export.build`` (``--help`` documents them)."""

    model: Optional[str] = None
    precision: str = "fp16"
    out: Optional[Path] = None
    image_size: Optional[int] = None
    random_weights: bool = False
    seed: int = 0
    allow_key_mismatch: bool = False
    max_batch: int = 4
    skip_tensorrt: bool = False
    force: bool = False
    # SAM2 (few-shot and stock)
    sam2_version: Optional[str] = None
    sam2_checkpoint: Optional[Path] = None
    adapter_checkpoint: Optional[Path] = None
    no_adapters: bool = False
    adapter_stages: Optional[str] = None
    channel_factor: Optional[float] = None
    stock_sam2: bool = False
    max_prompt_frames: int = 8
    max_objects: int = 8  # runtime.sam2.spec.DEFAULT_MAX_OBJECTS
    max_frame_side: int = 1920  # runtime.sam2.spec.DEFAULT_MAX_FRAME_SIDE
    calib: Optional[Path] = None
    int8_stages: str = "image_encoder"
    cpu_int8_stages: str = ""
    cpu_int8_range: str = "auto"
    calib_method: str = "entropy"
    plain_export: bool = False
    no_cpu_fused: bool = False
    # dense models and features
    checkpoint: Optional[Path] = None
    trunk: Optional[str] = None
    dino_config: str = "large"
    dino_size: Optional[int] = None
    fpn: bool = False
    split: bool = False
    fp32_parts: str = ""
    no_fp16_check: bool = False

    def given(self, name: str) -> bool:
        """Whether option ``name`` differs from its default (was asked for)."""
        default = next(f.default for f in fields(self) if f.name == name)
        return getattr(self, name) != default

    def refuse(self, names, why: str) -> None:
        """A :class:`UsageError` if any of ``names`` was given (they do not apply: ``why``)."""
        bad = [n for n in names if self.given(n)]
        if bad:
            flags = ", ".join("--" + n.replace("_", "-") for n in bad)
            raise UsageError(f"{flags} {'does' if len(bad) == 1 else 'do'} not apply {why}")

    def validate_common(self) -> None:
        if self.precision not in PRECISIONS:
            raise UsageError(f"--precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.max_batch < 1:
            raise UsageError("--max-batch must be >= 1")
        if self.out is not None and self.out.exists() and not self.out.is_dir():
            raise UsageError(f"--out {str(self.out)!r} exists and is not a folder; pass a folder path")


def banner_random_weights(log: Log) -> None:
    log("!" * 72 + "\n!! --random-weights: the model has RANDOM weights; the files run and are "
        "verified,\n!! but their outputs mean nothing. Pass the checkpoints for real use.\n" + "!" * 72)


def fingerprint(desc: Dict[str, Any]) -> str:
    """A short hash of everything the exported graphs depend on (reuse key)."""
    return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare_out(out: Path, fingerprint_now: str, force: bool, log: Log) -> Optional[ModelFolder]:
    """Make ``out`` ready for a build; returns the folder there if built from the same inputs (for reuse).

    Checks that ``out`` is (or can be) a writable folder, deletes the hidden
    ``.part`` files a killed build left, and marks a manifest already there
    ``status: building`` before any file is replaced, so that an interrupted
    re-export never leaves a folder claiming to be complete over mixed files
    (readers refuse it until a build finishes).
    """
    import os

    from runtime.core.fileio import remove_stale_parts, write_json_atomic
    from runtime.core.folder import MANIFEST_NAME

    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file, not a folder: give a folder to build into")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {str(out)!r} cannot be created ({e.strerror}): choose a writable location") from e
    if not os.access(out, os.W_OK | os.X_OK):
        raise UsageError(f"--out {str(out)!r} is not writable by this user: choose a writable location")
    stale = remove_stale_parts(out)
    if stale:
        log(f"[build] removed {len(stale)} partial file(s) an interrupted build left: {', '.join(stale[:3])}"
            + (" ..." if len(stale) > 3 else ""))
    previous = None
    if not force:
        try:
            folder = ModelFolder.read(out)
            previous = folder if folder.manifest.fingerprint == fingerprint_now else None
        except ModelFolderError:
            pass
    mpath = out / MANIFEST_NAME
    if mpath.exists():
        try:
            data = json.loads(mpath.read_text())
            if not isinstance(data, dict):
                raise ValueError("not an object")
            data.update(status="building", status_reason=f"export.build started rebuilding it at {now()}")
            write_json_atomic(mpath, data)
        except (ValueError, OSError):  # unreadable: a new one is written at the end
            mpath.unlink(missing_ok=True)
    return previous


def versions() -> Dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    from importlib.metadata import version

    return {"python": platform.python_version(), "torch": torch.__version__, "sam2": version("sam2"),
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def peak_rss_gib() -> float:
    """This process's peak resident memory so far, in GiB (Linux/macOS ``getrusage``; 0 elsewhere)."""
    try:
        import resource
        import sys as _sys
    except ImportError:  # Windows
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 30 if _sys.platform == "darwin" else 1 << 20), 3)


def finish(folder, t0: float, log: Log) -> None:
    """Close a build: status, timing and peak memory into the manifest, the manifest written last."""
    manifest = folder.manifest
    if manifest.status == "building":
        manifest.status = "complete"
    seconds, peak = round(time.time() - t0, 1), peak_rss_gib()
    manifest.checks["build"] = {"seconds": seconds, "peak_rss_gib": peak}
    folder.write()
    log(f"[done] {folder.path}/manifest.json ({manifest.status}) in {seconds:.1f}s, peak memory {peak:.2f} GiB")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
