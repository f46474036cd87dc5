"""``manifest.json``: what an engines folder was built from, read and checked at load.

Written by ``export.build``; read by the runtime, the benchmarks and the
calibration report. The runtime refuses a folder whose manifest is missing,
of another format version, or whose files do not match it, naming the problem.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from runtime.fileio import sha256_file
from runtime.spec import STAGES, StageSpec, stage_specs

MANIFEST_NAME = "manifest.json"
CONSTANTS_NAME = "constants.npz"
FORMAT_VERSION = 1


class ManifestError(ValueError):
    """An engines folder is incomplete or does not match its manifest."""


def load_manifest(engine_dir: str | Path, stages: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Read and validate ``engine_dir/manifest.json``.

    ``stages``: the stages the caller needs (default: the four SAM2 stages).
    Dense-model folders name their loader in the manifest; a SAM2 caller that
    opens one is told which class loads it.
    """
    engine_dir = Path(engine_dir)
    if not engine_dir.is_dir():
        raise ManifestError(
            f"engines folder {str(engine_dir)!r} does not exist; build one with "
            "`python -m export.build --out DIR` first"
        )
    path = engine_dir / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(
            f"{str(path)!r} is missing: {str(engine_dir)!r} is not a complete build; "
            "re-run `python -m export.build` for it"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ManifestError(f"{str(path)!r} is not valid JSON ({e}); rebuild the folder") from e
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ManifestError(
            f"{str(path)!r} has format_version {version!r}, this runtime reads "
            f"{FORMAT_VERSION}; rebuild the folder with this version of export.build"
        )
    for key in ("model", "stages", "model_config", "precision"):
        if key not in manifest:
            raise ManifestError(f"{str(path)!r} lacks the {key!r} entry; rebuild the folder")
    missing = [s for s in (STAGES if stages is None else stages) if s not in manifest["stages"]]
    if missing:
        loader = manifest.get("loader")
        if loader:
            raise ManifestError(
                f"{str(path)!r} holds a {manifest['model'].get('kind')!r} model, not the stages "
                f"{missing}: load it with {loader}")
        raise ManifestError(f"{str(path)!r} lists no entry for stages {missing}; rebuild")
    if manifest.get("status") != "complete":
        raise ManifestError(
            f"{str(path)!r} says status={manifest.get('status')!r}: the build did not "
            "finish or failed its accuracy checks; see the manifest's 'status_reason'"
        )
    return manifest


def manifest_specs(manifest: Dict[str, Any]) -> Dict[str, StageSpec]:
    """The tensor descriptions an engines folder was exported with."""
    ranges = {k: tuple(v) for k, v in manifest.get("axis_ranges", {}).items()}
    return stage_specs(manifest["model"]["image_size"], ranges)


def stage_file(engine_dir: str | Path, manifest: Dict[str, Any], stage: str, kind: str,
               verify_hash: bool = True) -> Path:
    """Path of a stage's ``kind`` file ("onnx" or "engine"), checked against the manifest."""
    entry = manifest["stages"][stage].get(kind)
    if not entry:
        hint = (
            "build engines on a machine with TensorRT (python -m export.build)"
            if kind == "engine"
            else "re-export the folder"
        )
        raise ManifestError(f"stage {stage!r} has no {kind} file in this build; {hint}")
    path = Path(engine_dir) / entry["file"]
    if not path.is_file():
        raise ManifestError(
            f"{str(path)!r} is missing from the engines folder (the manifest lists it); "
            "re-run export.build for this folder"
        )
    if verify_hash and entry.get("sha256") and sha256_file(path) != entry["sha256"]:
        raise ManifestError(
            f"{str(path)!r} does not match the sha256 recorded in the manifest: it was "
            "changed or replaced after the build; re-run export.build for this folder"
        )
    return path
