"""The model folder: the files one ``export.build`` made, and ``manifest.json``, their record.

This module is the one owner of the folder's layout and of the manifest's
format. The builder writes a :class:`Manifest` through it, the runtime opens
a folder through :meth:`ModelFolder.open`, the benchmarks and calibration
read it through the same records; nothing else indexes the JSON.

Layout (names from :func:`onnx_name` / :func:`engine_name`)::

    manifest.json                  written last, atomically (see Manifest)
    constants.npz                  host-side constants (SAM2 kinds)
    <stage>.onnx                   FP32 graph, verified against PyTorch
    <stage>.fp16.onnx              mixed-precision graph (FP16 build)
    <stage>.int8.onnx              Q/DQ INT8 graph (INT8 build, where it passed its gate)
    <stage>.cpu-int8.onnx          dynamic INT8 for ONNX Runtime on CPUs (--cpu-int8-stages)
    <stage>.cpu-fused.onnx         FP32 with attention fused for ONNX Runtime's CPU provider
    <stage>.<precision>.engine     TensorRT engine, built from the stage's precision file

*Edge stages* (``preprocess.onnx``: a uint8 frame -> the model input;
``postprocess.onnx``: low-res mask logits -> frame-size logits and masks) are
graphs without weights at the model's edge: listed apart from the model's
stages (``edge_specs`` / ``edge_stages``), FP32 only, never calibrated or
gated by precision, optional (older folders lack them: the runtime then does
that step on the host), and built into engines with the rest.

A stage's *variants* are its ONNX files: ``fp32``, ``fp16``, ``int8``,
``cpu-int8``, ``cpu-fused`` (the FP32 graph with its attention as ONNX
Runtime's ``MultiHeadAttention``, which only ONNX Runtime runs). Its *precision* is the variant its TensorRT engine is (or
would be) built from. Every file's sha256 is recorded; what the runtime loads
is the bytes it hashed (:meth:`ModelFolder.read_verified`), so a file
replaced after the build is refused, never half-used.

The folder *kind* says what a folder holds and which product opens it
(:data:`KINDS`): a product given a folder of another kind is told which one
fits.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from runtime.core.fileio import write_json_atomic
from runtime.core.spec import AxisRange, StageSpec, specs_from_dict, specs_to_dict
from runtime.errors import ModelFolderError

MANIFEST_NAME = "manifest.json"
CONSTANTS_NAME = "constants.npz"
FORMAT_VERSION = 2
VARIANTS = ("fp32", "fp16", "int8", "cpu-int8", "cpu-fused")
STATUSES = ("complete", "failed", "building")
# kind -> (what it holds, the products that open it)
KINDS: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    "sam2-fewshot": ("few-shot SAM2 with SANSA adapters", ("FewShotSegmenter",)),
    "sam2": ("stock SAM2 (object-score head, no adapters)",
             ("ImagePredictor", "VideoTracker", "FewShotSegmenter")),
    "sam2-unet": ("SAM2-UNet dense segmentation", ("DenseSegmenter",)),
    "sam2-unext": ("SAM2-UNeXT dense segmentation", ("DenseSegmenter",)),
    "features": ("SAM2 encoder features", ("FeatureExtractor",)),
}
REBUILD = "re-run `python -m export.build` for this folder"
# How to build a folder of each kind (for messages to a product given the wrong kind).
BUILD_HINT = {
    "sam2-fewshot": "python -m export.build --sam2-checkpoint SAM2.pt --adapter-checkpoint SANSA.pth",
    "sam2": "python -m export.build --stock-sam2 --no-adapters --sam2-checkpoint SAM2.pt",
    "sam2-unet": "python -m export.build --model sam2-unet --checkpoint SAM2-UNet.pth",
    "sam2-unext": "python -m export.build --model sam2-unext --checkpoint SAM2-UNeXT.pth",
    "features": "python -m export.build --model features --checkpoint SAM2.pt",
}


def onnx_name(stage: str, variant: str = "fp32") -> str:
    """File name of a stage's ONNX variant: ``image_encoder.onnx``, ``image_encoder.fp16.onnx``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; one of {VARIANTS}")
    return f"{stage}.onnx" if variant == "fp32" else f"{stage}.{variant}.onnx"


def engine_name(stage: str, precision: str) -> str:
    """File name of a stage's TensorRT engine: ``image_encoder.fp16.engine``."""
    return f"{stage}.{precision}.engine"


def kinds_for(product: str) -> Tuple[str, ...]:
    """The folder kinds ``product`` (a class name) opens."""
    return tuple(k for k, (_, products) in KINDS.items() if product in products)


# --------------------------------------------------------------------- records
@dataclass
class FileRecord:
    """One file of the folder: name, sha256, and facts about how it was made (``info``)."""

    file: str
    sha256: str
    info: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, **self.info}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FileRecord":
        name = str(d["file"])
        if Path(name).name != name or name in ("", ".", ".."):
            raise ValueError(f"file {name!r} is not a plain file name inside the model folder")
        return cls(name, str(d["sha256"]), {k: v for k, v in d.items() if k not in ("file", "sha256")})


@dataclass
class EngineRecord:
    """A TensorRT engine: what it was built from, with what, and for which GPU.

    ``built_from`` is the ONNX variant and ``onnx_sha256`` that file's hash;
    ``gpu`` is ``{"name", "compute_capability"}``; ``build`` holds the options
    that shaped it (``strongly_typed``, ``profiles``, workspace, timings).
    """

    file: str
    sha256: str
    precision: str
    built_from: str
    onnx_sha256: str
    tensorrt_version: str
    gpu: Dict[str, str]
    build: Dict[str, Any] = field(default_factory=dict)

    @property
    def file_record(self) -> FileRecord:
        return FileRecord(self.file, self.sha256)

    def to_dict(self) -> Dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "precision": self.precision,
                "built_from": self.built_from, "onnx_sha256": self.onnx_sha256,
                "tensorrt_version": self.tensorrt_version, "gpu": dict(self.gpu), "build": dict(self.build)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "EngineRecord":
        try:
            return cls(str(d["file"]), str(d["sha256"]), str(d["precision"]), str(d["built_from"]),
                       str(d["onnx_sha256"]), str(d["tensorrt_version"]), dict(d["gpu"]), dict(d.get("build", {})))
        except (KeyError, TypeError) as e:
            raise ModelFolderError(f"an engine record lacks {e}; {REBUILD}") from e


def engine_usable_here(record: EngineRecord, tensorrt_version: str, gpu: Mapping[str, str]) -> Optional[str]:
    """Why ``record``'s engine cannot run with this TensorRT and GPU, or None if it can.

    Engines are not portable: the TensorRT version must be the same, and the
    GPU's name and compute capability. The runtime refuses an engine for the
    reason given; the builder rebuilds it.
    """
    if str(record.tensorrt_version) != str(tensorrt_version):
        return (f"engine {record.file!r} was built with TensorRT {record.tensorrt_version}, this machine "
                f"has TensorRT {tensorrt_version}; engines are not portable across TensorRT versions")
    mismatched = [k for k in ("name", "compute_capability")
                  if k in record.gpu and str(record.gpu[k]) != str(gpu.get(k))]
    if mismatched:
        return (f"engine {record.file!r} was built for GPU {dict(record.gpu)}, this machine has "
                f"{dict(gpu)}; engines are not portable across GPUs")
    return None


@dataclass
class StageRecord:
    """One stage: its ONNX variants, the precision its engine is built at, the engine, measurements.

    ``parity``: the FP32 file against PyTorch (export); ``measured[variant]``:
    that variant's file against the FP32 file (its per-stage gate). The
    engine is (or, where TensorRT was absent, would be) built from
    ``files[precision]``: the manifest spells that out as ``engine_source``.
    """

    files: Dict[str, FileRecord]
    precision: str = "fp32"
    engine: Optional[EngineRecord] = None
    parity: Dict[str, Any] = field(default_factory=dict)
    measured: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        source = self.files.get(self.precision)
        return {"files": {v: r.to_dict() for v, r in self.files.items()}, "precision": self.precision,
                "engine_source": {"file": source.file, "measured": self.measured.get(self.precision)}
                if source else None,
                "engine": self.engine.to_dict() if self.engine else None, "parity": self.parity,
                "measured": self.measured}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StageRecord":
        return cls({v: FileRecord.from_dict(r) for v, r in d.get("files", {}).items()},
                   str(d.get("precision", "fp32")),
                   EngineRecord.from_dict(d["engine"]) if d.get("engine") else None,
                   dict(d.get("parity") or {}), dict(d.get("measured") or {}))


@dataclass
class ModelRecord:
    """What the folder's model is: SAM2 size and version, input size, adapters, weights.

    ``details`` holds the kind-specific description (dense models: trunk,
    split, FPN, DINOv2 settings, parts, outputs).
    """

    name: str
    image_size: int
    sam2_version: Optional[str] = None
    config: Optional[str] = None
    adapters: Optional[Dict[str, Any]] = None
    random_weights: bool = False
    seed: Optional[int] = None
    details: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "image_size": self.image_size, "sam2_version": self.sam2_version,
                "config": self.config, "adapters": self.adapters, "random_weights": self.random_weights,
                "seed": self.seed, **self.details}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelRecord":
        own = ("name", "image_size", "sam2_version", "config", "adapters", "random_weights", "seed")
        return cls(str(d["name"]), int(d["image_size"]), d.get("sam2_version"), d.get("config"),
                   d.get("adapters"), bool(d.get("random_weights")), d.get("seed"),
                   {k: v for k, v in d.items() if k not in own})


@dataclass
class Manifest:
    """``manifest.json`` as typed records (see the module docstring).

    ``checks`` holds the folder-level accuracy checks with their gates
    (``end_to_end``, ``fp16``, ``int8``, ``cpu-int8``: each a dict with
    ``passed``); ``tensorrt`` whether engines were built and why not;
    ``provenance`` versions, checkpoints and where each setting came from;
    ``flops`` the work of every benchmark case (``bench.cases.case_key``),
    counted at export: ``reference`` sam2's computation, ``export`` what the
    exported graphs execute (less where exact folds removed work).
    """

    kind: str
    model: ModelRecord
    model_config: Dict[str, Any]
    specs: Dict[str, StageSpec]
    stages: Dict[str, StageRecord]
    precision: str
    status: str = "building"
    status_reason: Optional[str] = None
    fingerprint: str = ""
    created: str = ""
    constants: Optional[FileRecord] = None
    checks: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    tensorrt: Dict[str, Any] = field(default_factory=dict)
    provenance: Dict[str, Any] = field(default_factory=dict)
    flops: Dict[str, Dict[str, int]] = field(default_factory=dict)
    edge_specs: Dict[str, StageSpec] = field(default_factory=dict)
    edge_stages: Dict[str, StageRecord] = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        return self.model.image_size

    @property
    def axis_ranges(self) -> Dict[str, AxisRange]:
        """Every dynamic axis' ``(min, opt, max)`` over the stages (what the engines admit)."""
        out: Dict[str, AxisRange] = {}
        for spec in self.specs.values():
            out.update(spec.axis_ranges)
        return out

    def axis_max(self, axis: str) -> int:
        return int(self.axis_ranges[axis][2])

    def fail(self, reason: str) -> None:
        """Mark the build failed (the runtime refuses the folder, quoting ``reason``)."""
        self.status = "failed"
        self.status_reason = reason if not self.status_reason else f"{self.status_reason}; {reason}"

    def to_dict(self) -> Dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION, "kind": self.kind, "status": self.status,
            "status_reason": self.status_reason, "fingerprint": self.fingerprint, "created": self.created,
            "precision": self.precision, "model": self.model.to_dict(), "model_config": self.model_config,
            "specs": specs_to_dict(self.specs),
            "stages": {s: r.to_dict() for s, r in self.stages.items()},
            "constants": self.constants.to_dict() if self.constants else None,
            "checks": self.checks, "tensorrt": self.tensorrt, "provenance": self.provenance,
            "flops": self.flops,
            "edge_specs": specs_to_dict(self.edge_specs),
            "edge_stages": {s: r.to_dict() for s, r in self.edge_stages.items()},
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = MANIFEST_NAME) -> "Manifest":
        if not isinstance(d, dict):
            raise ModelFolderError(f"{where!r} holds a {type(d).__name__}, not a manifest; {REBUILD}")
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise ModelFolderError(
                f"{where!r} has format_version {version!r}, this runtime reads {FORMAT_VERSION}; "
                f"rebuild the folder with this version of export.build")
        missing = [k for k in ("kind", "model", "model_config", "specs", "stages", "precision") if k not in d]
        if missing:
            raise ModelFolderError(f"{where!r} lacks the entries {missing}; {REBUILD}")
        if d["kind"] not in KINDS:
            raise ModelFolderError(f"{where!r} has the unknown kind {d['kind']!r}; {REBUILD}")
        try:
            manifest = cls(
                kind=d["kind"], model=ModelRecord.from_dict(d["model"]), model_config=dict(d["model_config"]),
                specs=specs_from_dict(d["specs"]),
                stages={s: StageRecord.from_dict(r) for s, r in d["stages"].items()},
                precision=str(d["precision"]), status=str(d.get("status")), status_reason=d.get("status_reason"),
                fingerprint=str(d.get("fingerprint", "")), created=str(d.get("created", "")),
                constants=FileRecord.from_dict(d["constants"]) if d.get("constants") else None,
                checks=dict(d.get("checks") or {}), tensorrt=dict(d.get("tensorrt") or {}),
                provenance=dict(d.get("provenance") or {}),
                flops={str(k): {str(c): int(n) for c, n in v.items()} for k, v in (d.get("flops") or {}).items()},
                edge_specs=specs_from_dict(d.get("edge_specs") or {}),
                edge_stages={s: StageRecord.from_dict(r) for s, r in (d.get("edge_stages") or {}).items()})
        except ModelFolderError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ModelFolderError(f"{where!r} is malformed ({type(e).__name__}: {e}); {REBUILD}") from e
        manifest.check_consistent(where)
        return manifest

    def check_consistent(self, where: str = MANIFEST_NAME) -> None:
        """The records agree with each other (an edited manifest is refused before anything runs)."""
        problems = []
        if set(self.stages) != set(self.specs):
            problems.append(f"stages {sorted(self.stages)} but specs for {sorted(self.specs)}")
        if set(self.edge_stages) != set(self.edge_specs):
            problems.append(f"edge stages {sorted(self.edge_stages)} but specs for {sorted(self.edge_specs)}")
        if set(self.edge_specs) & set(self.specs):
            problems.append(f"{sorted(set(self.edge_specs) & set(self.specs))} are both model and edge stages")
        for name, spec in self.specs.items():
            for t in spec.inputs:
                if t.name == "image" and len(t.shape) == 4 and t.shape[2:] != (self.image_size,) * 2:
                    problems.append(f"image_size {self.image_size} but stage {name!r} takes {t.shape[2:]} images")
        for name, st in {**self.stages, **self.edge_stages}.items():
            if st.precision not in st.files:
                problems.append(f"stage {name!r} runs at {st.precision} but has no {st.precision} file")
        if problems:
            raise ModelFolderError(f"{where!r} contradicts itself ({'; '.join(problems)}): it was edited "
                                   f"after the build; {REBUILD}")


# ----------------------------------------------------------------------- folder
def wrong_kind_message(path: Path, kind: str, product: str, kinds: Sequence[str]) -> str:
    """Why ``product`` cannot run a folder of ``kind``, what it runs, and what runs this one."""
    builds = "; ".join(f"`{BUILD_HINT[k]} ...`" for k in kinds)
    return (f"{str(path)!r} holds a {kind!r} model ({KINDS[kind][0]}), which {product} cannot run: it "
            f"runs {' or '.join(repr(k) for k in kinds)} folders ({builds}); open this one with "
            f"{' or '.join(KINDS[kind][1])}")


class ModelFolder:
    """A model folder on disk and its manifest.

    >>> folder = ModelFolder.open("engines/tiny", kinds=("sam2-fewshot", "sam2"))
    >>> folder.manifest.specs["image_encoder"], folder.read_verified("image_encoder", "fp32")
    """

    def __init__(self, path: str | Path, manifest: Manifest):
        self.path = Path(path)
        self.manifest = manifest

    # ----------------------------------------------------------------- reading
    @classmethod
    def read(cls, path: str | Path) -> "ModelFolder":
        """The folder's manifest as it is (any status): for the builder and reports."""
        path = Path(path)
        if not path.is_dir():
            raise ModelFolderError(
                f"model folder {str(path)!r} does not exist; build one with "
                "`python -m export.build --out DIR` first")
        mpath = path / MANIFEST_NAME
        if not mpath.is_file():
            raise ModelFolderError(f"{str(mpath)!r} is missing: {str(path)!r} is not a complete build; {REBUILD}")
        try:
            data = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelFolderError(f"{str(mpath)!r} is not valid JSON ({e}); {REBUILD}") from e
        except OSError as e:
            raise ModelFolderError(f"{str(mpath)!r} cannot be read ({e.strerror}); check the "
                                   "folder's permissions") from e
        return cls(path, Manifest.from_dict(data, str(mpath)))

    @classmethod
    def open(cls, path: str | Path, kinds: Optional[Sequence[str]] = None,
             product: Optional[str] = None) -> "ModelFolder":
        """A complete folder of one of ``kinds`` (default: those ``product`` opens), or a clear error."""
        folder = cls.read(path)
        m = folder.manifest
        kinds = tuple(kinds) if kinds is not None else (kinds_for(product) if product else tuple(KINDS))
        if m.kind not in kinds:
            what = product or " / ".join(sorted({p for k in kinds for p in KINDS[k][1]}))
            raise ModelFolderError(wrong_kind_message(folder.path, m.kind, what, kinds))
        if m.status != "complete":
            raise ModelFolderError(
                f"{str(folder.path / MANIFEST_NAME)!r} says status={m.status!r}: the build did not "
                f"finish or failed its checks ({m.status_reason or 'no reason recorded'}); {REBUILD}")
        return folder

    @property
    def specs(self) -> Dict[str, StageSpec]:
        """The model's stages (weights, precisions, calibration), in run order."""
        return self.manifest.specs

    @property
    def runnable_specs(self) -> Dict[str, StageSpec]:
        """Every graph with a file to run: the model's stages, then the edge stages."""
        return {**self.manifest.specs, **self.manifest.edge_specs}

    def stage(self, name: str) -> StageRecord:
        """The record of a model or edge stage."""
        m = self.manifest
        rec = m.stages.get(name) or m.edge_stages.get(name)
        if rec is None:
            raise ModelFolderError(f"{str(self.path)!r} has no stage {name!r} (it has "
                                   f"{list(m.stages) + list(m.edge_stages)}); {REBUILD}")
        return rec

    def file_record(self, stage: str, variant: str) -> FileRecord:
        rec = self.stage(stage).files.get(variant)
        if rec is None:
            raise ModelFolderError(f"stage {stage!r} has no {variant} file in {str(self.path)!r}; {REBUILD}")
        return rec

    def read_verified(self, rec: FileRecord) -> bytes:
        """The bytes of ``rec``'s file, checked against its sha256 (what is hashed is what is used)."""
        path = self.path / rec.file
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ModelFolderError(f"{str(path)!r} is missing from the model folder (the manifest lists "
                                   f"it); {REBUILD}") from None
        except OSError as e:
            raise ModelFolderError(f"{str(path)!r} cannot be read ({e.strerror}); check the folder's "
                                   "permissions") from e
        if hashlib.sha256(data).hexdigest() != rec.sha256:
            raise ModelFolderError(
                f"{str(path)!r} does not match the sha256 recorded in the manifest: it was changed "
                f"or replaced after the build; {REBUILD}")
        return data

    def engine(self, stage: str) -> EngineRecord:
        rec = self.stage(stage).engine
        if rec is None:
            why = self.manifest.tensorrt.get("reason", "no reason recorded")
            raise ModelFolderError(
                f"stage {stage!r} has no TensorRT engine in {str(self.path)!r} (built where TensorRT "
                f"could not run: {why}); rebuild it on the device with `python -m export.build`, or "
                "use the onnxruntime backend")
        return rec

    def load_constants(self) -> Dict[str, Any]:
        """``constants.npz`` as ``{name: array}``, hash-checked; errors name the file."""
        import io

        import numpy as np

        rec = self.manifest.constants
        if rec is None:
            raise ModelFolderError(f"{str(self.path / MANIFEST_NAME)!r} records no constants file; {REBUILD}")
        data = self.read_verified(rec)
        try:
            with np.load(io.BytesIO(data)) as z:
                return {k: z[k] for k in z.files}
        except Exception as e:  # zipfile.BadZipFile, ValueError: a file that hashes right but is no npz
            raise ModelFolderError(f"{str(self.path / rec.file)!r} is not a readable .npz ({e}); {REBUILD}") from e

    def write(self) -> None:
        """Write ``manifest.json`` atomically."""
        write_json_atomic(self.path / MANIFEST_NAME, self.manifest.to_dict())
