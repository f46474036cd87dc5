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
    calib: Optional[Path] = None
    int8_stages: str = "image_encoder"
    cpu_int8_stages: str = ""
    cpu_int8_range: str = "auto"
    calib_method: str = "entropy"
    plain_export: bool = False
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


def previous_folder(out: Path, fingerprint_now: str, force: bool) -> Optional[ModelFolder]:
    """The folder already at ``out`` if it was built from the same inputs (its files may be reused)."""
    if force:
        return None
    try:
        folder = ModelFolder.read(out)
    except ModelFolderError:
        return None
    return folder if folder.manifest.fingerprint == fingerprint_now else None


def versions() -> Dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    from importlib.metadata import version

    return {"python": platform.python_version(), "torch": torch.__version__, "sam2": version("sam2"),
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
