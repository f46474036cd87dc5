"""Reading and writing checkpoints in the official file formats.

- SAM2: ``torch.save({"model": state_dict}, "sam2.1_hiera_tiny.pt")`` as Meta ships them.
- Adapters: ``{"model": adapter_state_dict}``; keys may carry DDP's ``module.`` prefix.

Both are read with ``weights_only=True``. Problems (missing file, truncated or
non-checkpoint file, shapes of another model size) raise
:class:`CheckpointError` with a message that names the file and the fix.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Dict, Iterable, List, Tuple

import torch

from runtime.fileio import atomic_path

# Embedding width of the Hiera patch embedding, per model size: lets an error
# say which model a mismatching checkpoint belongs to.
_EMBED_DIM_TO_MODEL = {96: "tiny or small", 112: "base_plus", 144: "large"}
_PATCH_KEY = "image_encoder.trunk.patch_embed.proj.weight"


class CheckpointError(ValueError):
    """A checkpoint file cannot be used with the model being built."""


def read_state_dict(path: str | os.PathLike, what: str, bare_ok: bool = False) -> Dict[str, torch.Tensor]:
    """``torch.load(path, weights_only=True)["model"]`` with clear errors; strips ``module.``.

    ``bare_ok``: also accept a bare state dict (``torch.save(model.state_dict())``,
    as e.g. SAM2-UNet's training code saves).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} checkpoint {str(path)!r} does not exist; check the path")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(
            f"{what} checkpoint {str(path)!r} cannot be read ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}); the file is truncated, corrupted or not a "
            "PyTorch checkpoint: download it again"
        ) from e
    except Exception as e:  # pickle.UnpicklingError for non-tensor payloads
        raise CheckpointError(
            f"{what} checkpoint {str(path)!r} is not a weights-only PyTorch checkpoint "
            f"({type(e).__name__}); expected a file holding {{'model': state_dict}}"
        ) from e
    if bare_ok and isinstance(ckpt, dict) and "model" not in ckpt and ckpt \
            and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        ckpt = {"model": ckpt}
    if not isinstance(ckpt, dict) or "model" not in ckpt or not isinstance(ckpt["model"], dict):
        keys = list(ckpt)[:5] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{what} checkpoint {str(path)!r} has no 'model' state dict (found {keys}); "
            "the official files are saved as {'model': state_dict}"
        )
    return {_strip_prefix(k): v for k, v in ckpt["model"].items()}


def _strip_prefix(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module."):]
    return key


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
    model_name: str, path: str,
) -> str:
    lines = [f"  {k}: checkpoint {c} vs model {m}" for k, c, m in mismatches[:5]]
    more = f"\n  ... and {len(mismatches) - 5} more" if len(mismatches) > 5 else ""
    hint = ""
    if _PATCH_KEY in ckpt_sd:
        guess = _EMBED_DIM_TO_MODEL.get(ckpt_sd[_PATCH_KEY].shape[0])
        if guess:
            hint = f"; it looks like a checkpoint of SAM2 {guess}"
    return (
        f"checkpoint {path!r} does not fit model {model_name!r}: "
        f"{len(mismatches)} tensors have other shapes{hint}. Pass the matching "
        f"--model (or the right checkpoint):\n" + "\n".join(lines) + more
    )


def save_checkpoint(path: str | os.PathLike, state_dict: Dict[str, torch.Tensor],
                    prefix: str = "") -> Path:
    """Write ``{"model": state_dict}`` atomically (optionally prefixing every key)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"model": {prefix + k: v.detach().clone() for k, v in state_dict.items()}}, tmp)
    return path


def unknown_keys(keys: Iterable[str], allowed_prefixes: Iterable[str]) -> List[str]:
    allowed = tuple(allowed_prefixes)
    return [k for k in keys if not k.startswith(allowed)]
