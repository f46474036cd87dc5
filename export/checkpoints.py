"""Reading and writing checkpoints in the file formats their authors write.

- SAM2 (Meta): ``torch.save({"model": state_dict}, "sam2_hiera_large.pt")``.
  SAM2.0 and SAM2.1 files differ in keys only (2.1 adds ``no_obj_embed_spatial``
  and ``obj_ptr_tpos_proj``): :func:`sam2_version_of` tells them apart and
  :func:`sam2_model_of` the model size.
- SANSA adapters (``main.py`` of the SANSA repository):
  ``torch.save({"model": adapter_sd, "optimizer": ..., "lr_scheduler": ...,
  "epoch": int, "args": argparse.Namespace}, "checkpoint.pth")`` where
  ``adapter_sd`` holds the parameters whose name contains ``adapter``:
  ``sam.image_encoder.trunk.blocks.{i}.adapter.{adapter_layer_norm_before,
  down_proj,up_proj}.{weight,bias}`` (``module.`` in front after DDP
  training). :func:`sansa_settings` reads the build settings from ``args``.
- Dense models (SAM2-UNet / SAM2-UNeXT ``train.py``): a bare state dict.

Every file is read with ``weights_only=True``. The only class allowed besides
tensors and plain containers is ``argparse.Namespace`` (SANSA's ``args``);
anything else is refused before it is constructed, so no code in a file runs.
Problems raise :class:`CheckpointError` naming the file and the fix.
"""

from __future__ import annotations

import argparse
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from runtime.core.fileio import atomic_path
from runtime.errors import UsageError

# Exactly what SANSA's checkpoints hold besides tensors and plain containers.
SAFE_GLOBALS = (argparse.Namespace,)
# Key prefixes stripped on load: DDP's wrapper, then SANSA's ``self.sam``.
WRAPPER_PREFIXES = ("module.",)
SANSA_PREFIX = "sam."

# Hiera patch-embedding width and block count per SAM2 model size.
_PATCH_KEY = "image_encoder.trunk.patch_embed.proj.weight"
_MODEL_BY_EMBED_AND_DEPTH = {(96, 12): "tiny", (96, 16): "small", (112, 24): "base_plus",
                             (144, 48): "large"}
_EMBED_DIM_TO_MODEL = {96: "tiny or small", 112: "base_plus", 144: "large"}
# Keys only SAM2.1 checkpoints have.
SAM2_1_KEYS = ("no_obj_embed_spatial", "obj_ptr_tpos_proj.weight")
# SANSA's ``--sam2_version`` (model size) -> this project's model names.
SANSA_MODEL_NAMES = {"tiny": "tiny", "small": "small", "base": "base_plus", "base_plus": "base_plus",
                     "large": "large"}


class CheckpointError(UsageError):
    """A checkpoint file cannot be used with the model being built."""


@dataclass
class Checkpoint:
    """One file's state dict (prefixes stripped) and, for SANSA files, its training ``args``."""

    path: Path
    state_dict: Dict[str, torch.Tensor]
    args: Optional[Dict[str, Any]] = None
    extras: List[str] = field(default_factory=list)  # other top-level entries (optimizer, ...)


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:200] if lines else type(e).__name__


def _forbidden_global(e: BaseException) -> Optional[str]:
    """The class a weights-only load refused, from torch's message (``GLOBAL os.system``)."""
    m = re.search(r"GLOBAL ([\w.]+)", str(e)) or re.search(r"Unsupported global: ([\w.]+)", str(e))
    return m.group(1) if m else None


def _load(path: Path, what: str) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{what} checkpoint {str(path)!r} does not exist; check the path")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{what} checkpoint {str(path)!r} is empty (0 bytes): the download or "
                              "copy did not finish; fetch the file again")
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(
            f"{what} checkpoint {str(path)!r} cannot be read ({type(e).__name__}: {_first_line(e)}); "
            "the file is truncated, corrupted or not a PyTorch checkpoint: download it again") from e
    except Exception as e:  # pickle.UnpicklingError: a class outside the allowlist, or not a pickle
        name = _forbidden_global(e)
        if name is None:
            raise CheckpointError(
                f"{what} checkpoint {str(path)!r} is not a PyTorch checkpoint ({type(e).__name__}: "
                f"{_first_line(e)}); the file is truncated, corrupted or of another format: download "
                "it again") from e
        raise CheckpointError(
            f"{what} checkpoint {str(path)!r} holds an object of type {name!r}, which a weights-only load does not "
            "allow (nothing in the file was executed). Expected {'model': state_dict}, optionally "
            "with SANSA's 'optimizer', 'lr_scheduler', 'epoch' and 'args' (argparse.Namespace); "
            "re-save the weights as torch.save({'model': model.state_dict()}, PATH)") from e


def _strip(key: str, prefixes: Tuple[str, ...]) -> str:
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def read_checkpoint(path: str | os.PathLike, what: str, bare_ok: bool = False,
                    sansa: bool = False) -> Checkpoint:
    """Read ``path`` (weights only) into a :class:`Checkpoint`.

    ``bare_ok``: also accept a bare state dict (``torch.save(model.state_dict())``,
    as SAM2-UNet's training code saves). ``sansa``: an adapter file as SANSA
    writes it: ``sam.`` is stripped besides ``module.``, and ``args`` is kept.
    """
    path = Path(path)
    ckpt = _load(path, what)
    if bare_ok and isinstance(ckpt, dict) and "model" not in ckpt and ckpt \
            and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        ckpt = {"model": ckpt}
    if not isinstance(ckpt, dict) or "model" not in ckpt or not isinstance(ckpt["model"], dict):
        keys = list(ckpt)[:5] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{what} checkpoint {str(path)!r} has no 'model' state dict (found {keys}); "
            "the official files are saved as {'model': state_dict}")
    prefixes = WRAPPER_PREFIXES + ((SANSA_PREFIX,) if sansa else ())
    sd = {}
    for k, v in ckpt["model"].items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{what} checkpoint {str(path)!r}: entry {k!r} of 'model' is a "
                                  f"{type(v).__name__}, not a tensor")
        sd[_strip(k, prefixes)] = v
    args = ckpt.get("args")
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    elif args is not None and not isinstance(args, dict):
        args = None
    return Checkpoint(path, sd, args if sansa else None, [k for k in ckpt if k not in ("model", "args")])


def read_state_dict(path: str | os.PathLike, what: str, bare_ok: bool = False) -> Dict[str, torch.Tensor]:
    """The ``model`` state dict of ``path`` (see :func:`read_checkpoint`)."""
    return read_checkpoint(path, what, bare_ok=bare_ok).state_dict


# ------------------------------------------------------------- what a file is
def sam2_version_of(sd: Dict[str, torch.Tensor]) -> str:
    """``"2.1"`` if the state dict has SAM2.1's extra parameters, else ``"2.0"``."""
    return "2.1" if any(k in sd for k in SAM2_1_KEYS) else "2.0"


def sam2_model_of(sd: Dict[str, torch.Tensor]) -> Optional[str]:
    """The SAM2 model size a state dict belongs to (None if it has no Hiera trunk)."""
    if _PATCH_KEY not in sd:
        return None
    blocks = {int(m.group(1)) for k in sd for m in [re.match(r"image_encoder\.trunk\.blocks\.(\d+)\.", k)]
              if m}
    return _MODEL_BY_EMBED_AND_DEPTH.get((int(sd[_PATCH_KEY].shape[0]), len(blocks)))


def sansa_settings(args: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """Build settings recorded in SANSA's ``args``: ``model``, ``channel_factor``, ``adapter_stages``.

    Only the entries present (and readable) are returned.
    """
    out: Dict[str, Any] = {}
    if not args:
        return out
    v = args.get("sam2_version")
    if isinstance(v, str) and v in SANSA_MODEL_NAMES:
        out["model"] = SANSA_MODEL_NAMES[v]
    cf = args.get("channel_factor")
    if isinstance(cf, (int, float)) and not isinstance(cf, bool):
        out["channel_factor"] = float(cf)
    st = args.get("adaptformer_stages")
    if isinstance(st, (list, tuple)) and st and all(isinstance(s, int) and s >= 0 for s in st):
        out["adapter_stages"] = tuple(int(s) for s in st)
    return out


# ----------------------------------------------------------------- messages
def shape_mismatches(
    model_sd: Dict[str, torch.Tensor], ckpt_sd: Dict[str, torch.Tensor]
) -> List[Tuple[str, tuple, tuple]]:
    """``(key, checkpoint_shape, model_shape)`` for every common key whose shapes differ."""
    return [
        (k, tuple(v.shape), tuple(model_sd[k].shape))
        for k, v in ckpt_sd.items()
        if k in model_sd and tuple(v.shape) != tuple(model_sd[k].shape)
    ]


def describe_shape_mismatch(
    mismatches: List[Tuple[str, tuple, tuple]], ckpt_sd: Dict[str, torch.Tensor],
    model_name: str, path: str, hint: str = "",
) -> str:
    lines = [f"  {k}: checkpoint {c} vs model {m}" for k, c, m in mismatches[:5]]
    more = f"\n  ... and {len(mismatches) - 5} more" if len(mismatches) > 5 else ""
    if not hint and _PATCH_KEY in ckpt_sd:
        guess = _EMBED_DIM_TO_MODEL.get(ckpt_sd[_PATCH_KEY].shape[0])
        if guess:
            hint = f"; it looks like a checkpoint of SAM2 {guess}. Pass the matching --model"
    return (
        f"checkpoint {path!r} does not fit model {model_name!r}: "
        f"{len(mismatches)} tensors have other shapes{hint or '. Pass the matching --model'} "
        "(or the right checkpoint):\n" + "\n".join(lines) + more
    )


# ------------------------------------------------------------------ writing
def save_checkpoint(path: str | os.PathLike, state_dict: Dict[str, torch.Tensor],
                    prefix: str = "", **entries: Any) -> Path:
    """Write ``{"model": state_dict, **entries}`` atomically (optionally prefixing every key)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"model": {prefix + k: v.detach().clone() for k, v in state_dict.items()},
                    **entries}, tmp)
    return path
