"""What to build (:class:`DenseChoice`), building it, random weights, and checkpoints.

Checkpoint layouts (what users bring):

- ``sam2-unet`` / ``sam2-unext``: the file the authors' ``train.py`` writes,
  ``torch.save(model.state_dict(), 'SAM2-UNet-20.pth')``: a bare state dict
  (``encoder.*``, ``rfb*``, ``up*``, ``side*``, ``head`` for SAM2-UNet;
  ``sam.*``, ``dino.model.*``, ``align*``, ``reduce*``, ``up*``, ``head`` for
  SAM2-UNeXT). ``{"model": state_dict}`` and DDP's ``module.`` prefix are
  accepted too.
- ``features``: an official SAM2 checkpoint ``{"model": state_dict}``; its
  ``image_encoder.trunk.*`` / ``image_encoder.neck.*`` tensors are used, the
  rest (memory, decoder) is reported as unused.

Missing and unexpected keys are listed by name and are an error unless
``allow_mismatch``; shapes of another trunk size or DINOv2 input size are
always an error that names the likely setting.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from export.checkpoints import CheckpointError, read_state_dict, save_checkpoint, shape_mismatches
from export.dense.dinov2 import TINY_DINO, DinoConfig
from export.models import MODEL_NAMES, SAM2_VERSIONS
from runtime.dense.spec import KINDS, dense_stage_specs, part_names
from runtime.core.spec import StageSpec, check_image_size
from runtime.errors import UsageError

log = logging.getLogger(__name__)

DEFAULT_IMAGE_SIZE = {"sam2-unet": 352, "sam2-unext": 1024, "features": 1024}
DEFAULT_TRUNK = {"sam2-unet": "large", "sam2-unext": "large", "features": "tiny"}
DEFAULT_VERSION = {"sam2-unet": "2.0", "sam2-unext": "2.0", "features": "2.1"}
DINO_CONFIGS = {"large": DinoConfig(), "tiny": TINY_DINO}
# Which model a trunk width belongs to (shape errors say it).
_WIDTH_TO_TRUNK = {96: "tiny or small", 112: "base_plus", 144: "large"}
# Key prefix of the trunk in each layout.
TRUNK_PREFIX = {"sam2-unet": "encoder.", "sam2-unext": "sam.", "features": "image_encoder.trunk."}


@dataclass(frozen=True)
class DenseChoice:
    """A dense model / feature engine to build."""

    kind: str
    trunk: str = "large"
    sam2_version: str = "2.0"
    image_size: int = 352
    dino: Optional[DinoConfig] = None  # sam2-unext only
    fpn: bool = False  # features only
    split: bool = False  # sam2-unet / sam2-unext only

    def __post_init__(self):
        if self.kind not in KINDS:
            raise UsageError(f"unknown model {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.trunk not in MODEL_NAMES:
            raise UsageError(f"unknown trunk {self.trunk!r}; choose one of {', '.join(MODEL_NAMES)}")
        if self.sam2_version not in SAM2_VERSIONS:
            raise UsageError(f"unknown SAM2 version {self.sam2_version!r}; choose one of "
                             f"{', '.join(SAM2_VERSIONS)}")
        check_image_size(self.image_size)
        if self.kind == "sam2-unext" and self.dino is None:
            object.__setattr__(self, "dino", DinoConfig())
        if self.kind != "sam2-unext" and self.dino is not None:
            raise UsageError("a DINOv2 config only applies to --model sam2-unext")
        if self.fpn and self.kind != "features":
            raise UsageError("--fpn only applies to --model features")
        part_names(self.kind, self.split)  # raises for a split of 'features'

    @classmethod
    def default(cls, kind: str, **kw) -> "DenseChoice":
        kw.setdefault("trunk", DEFAULT_TRUNK.get(kind, "large"))
        kw.setdefault("sam2_version", DEFAULT_VERSION.get(kind, "2.0"))
        kw.setdefault("image_size", DEFAULT_IMAGE_SIZE.get(kind, 1024))
        return cls(kind, **kw)

    def describe(self) -> dict:
        d = asdict(self)
        d["dino"] = None if self.dino is None else asdict(self.dino)
        return d


# --------------------------------------------------------------------------- building
def build_dense(choice: DenseChoice, seed: int = 0) -> nn.Module:
    """The PyTorch model (authors' structure) with default-initialised weights, eval mode."""
    torch.manual_seed(seed)
    if choice.kind == "sam2-unet":
        from export.dense.sam2_unet import SAM2UNet

        model = SAM2UNet(choice.trunk, choice.sam2_version)
    elif choice.kind == "sam2-unext":
        from export.dense.sam2_unext import SAM2UNeXT

        model = SAM2UNeXT(choice.trunk, choice.sam2_version, choice.dino)
    else:
        from export.dense.features import SAM2Features

        model = SAM2Features(choice.trunk, choice.sam2_version)
    return model.eval()


def export_nets(model: nn.Module, choice: DenseChoice) -> Dict[str, nn.Module]:
    """``{part: wrapper}`` whose forwards match :func:`specs`' tensors, in run order."""
    if choice.kind == "sam2-unet":
        from export.dense.sam2_unet import export_nets as nets
        out = nets(model, choice.split)
    elif choice.kind == "sam2-unext":
        from export.dense.sam2_unext import export_nets as nets
        out = nets(model, choice.split, choice.image_size)
    else:
        from export.dense.features import export_nets as nets
        out = nets(model, choice.fpn)
    return {k: v.eval() for k, v in out.items()}


def reference_net(model: nn.Module, choice: DenseChoice) -> nn.Module:
    """The whole model on ``image`` in [0,1] as the authors' forward computes it (end-to-end reference)."""
    if choice.kind == "sam2-unext":
        from export.dense.sam2_unext import UNeXtReferenceNet

        return UNeXtReferenceNet(model).eval()
    from dataclasses import replace

    return next(iter(export_nets(model, replace(choice, split=False)).values()))


def model_config(model: nn.Module, choice: DenseChoice) -> dict:
    """What the tensor shapes depend on (recorded in the manifest, read by the runtime)."""
    from export.dense.blocks import stage_channels

    if choice.kind == "features":
        cfg = {"trunk_channels": model.trunk_channels}
        if choice.fpn:
            from export.dense.features import FPN_DIM

            cfg.update(fpn_dim=FPN_DIM, fpn_strides=model.fpn_strides())
        return cfg
    trunk = model.encoder if choice.kind == "sam2-unet" else model.sam
    cfg = {"trunk_channels": stage_channels(trunk)}
    if choice.kind == "sam2-unext":
        cfg.update(dino_dim=choice.dino.embed_dim, dino_grid=choice.dino.grid,
                   dino_size=choice.dino.img_size)
    return cfg


def specs(model: nn.Module, choice: DenseChoice, max_batch: int = 4) -> Dict[str, StageSpec]:
    return dense_stage_specs(choice.kind, choice.image_size, model_config(model, choice),
                             choice.split, {"batch": (1, 1, max_batch)})


@torch.no_grad()
def randomize_dense_(model: nn.Module, seed: int) -> None:
    """Seeded random weights that exercise every path (see ``export.assembly.randomize_``)
    plus non-trivial BatchNorm statistics (so BN folding is checked too)."""
    from export.assembly import randomize_

    randomize_(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    for _, m in sorted(model.named_modules(), key=lambda kv: kv[0]):
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.copy_(1.0 + 0.1 * torch.randn(m.weight.shape, generator=g))


@torch.no_grad()
def spread_logits_(model: nn.Module, choice: DenseChoice, seed: int, target_std: float = 4.0) -> None:
    """Rescale the random ``head`` conv so logits spread like a trained model's (std ~4, mean 0).

    Default-initialised heads give logits of ~1e-2, where every probability is
    ~0.5 and a probability-map error says nothing. One forward pass on a seeded
    image measures the head's input; deterministic for a given seed.
    """
    if choice.kind == "features":
        return
    g = torch.Generator().manual_seed(seed + 2)
    x = torch.rand(1, 3, choice.image_size, choice.image_size, generator=g)
    seen = {}
    hook = model.head.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    try:
        from export.dense.blocks import Normalize

        model(Normalize()(x))
    finally:
        hook.remove()
    out = seen["out"]
    scale = target_std / max(float(out.std()), 1e-12)
    model.head.weight.mul_(scale)
    model.head.bias.mul_(scale).sub_(float(out.mean()) * scale)


def authors_state_dict(model: nn.Module, choice: DenseChoice) -> Dict[str, torch.Tensor]:
    """The model's weights in the layout users' files have (see the module docstring)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def write_random_checkpoint(choice: DenseChoice, path: str | Path, seed: int = 0) -> Path:
    """Write seeded random weights as the authors' training code saves them.

    SAM2-UNet / SAM2-UNeXT: a bare state dict with DDP's ``module.`` prefix
    absent (as ``train.py`` saves); features: ``{"model": ...}`` as Meta's
    SAM2 files, with a few non-encoder tensors that loading must skip.
    """
    model = build_dense(choice, seed)
    randomize_dense_(model, seed)
    spread_logits_(model, choice, seed)
    sd = authors_state_dict(model, choice)
    path = Path(path)
    if choice.kind == "features":
        sd["sam_mask_decoder.iou_token.weight"] = torch.zeros(4, 256)
        sd["no_mem_embed"] = torch.zeros(1, 1, 256)
        return save_checkpoint(path, sd)
    from runtime.core.fileio import atomic_path

    with atomic_path(path) as tmp:
        torch.save(sd, tmp)
    return path


@dataclass
class DenseLoadReport:
    checkpoint: Optional[str] = None
    random_weights: bool = False
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    unused_other_modules: int = 0  # features: SAM2 tensors outside the image encoder


def _layout_hint(keys: List[str], choice: DenseChoice) -> str:
    has = lambda p: any(k.startswith(p) for k in keys)  # noqa: E731
    if choice.kind != "features" and has("image_encoder.trunk."):
        return ("it looks like an official SAM2 checkpoint (the pretrained encoder), not a trained "
                f"{choice.kind} model: pass the file the authors' train.py saved")
    if choice.kind == "sam2-unext" and has("encoder.") and has("rfb1."):
        return "it looks like a SAM2-UNet checkpoint: pass --model sam2-unet"
    if choice.kind == "sam2-unet" and has("sam.") and has("dino."):
        return "it looks like a SAM2-UNeXT checkpoint: pass --model sam2-unext"
    if choice.kind == "features" and (has("encoder.") or has("sam.")):
        return ("it looks like a SAM2-UNet/UNeXT checkpoint; --model features takes an official "
                "SAM2 checkpoint")
    return ""


def _listing(keys: List[str], n: int = 10) -> str:
    return "\n".join(f"    {k}" for k in keys[:n]) + (f"\n    ... and {len(keys) - n} more" if len(keys) > n else "")


def _shape_message(bad: List[Tuple[str, tuple, tuple]], sd: Dict[str, torch.Tensor],
                   choice: DenseChoice, path: str) -> str:
    layout = _layout_hint(list(sd), choice)
    hints = [layout] if layout else []
    pk = TRUNK_PREFIX[choice.kind] + "patch_embed.proj.weight"
    if pk in sd and any(k.startswith(TRUNK_PREFIX[choice.kind]) for k, _, _ in bad):
        guess = _WIDTH_TO_TRUNK.get(int(sd[pk].shape[0]))
        if guess:
            hints.append(f"its trunk looks like Hiera {guess}: pass --trunk accordingly")
    pe = sd.get("dino.model.pos_embed")
    if pe is not None and choice.dino is not None and pe.shape[1] != 1 + choice.dino.grid ** 2:
        g = int(round((pe.shape[1] - 1) ** 0.5))
        hints.append(f"its DINOv2 position embedding is for a {g}x{g} grid "
                     f"(--dino-size {g * choice.dino.patch_size})")
    pw = sd.get("dino.model.patch_embed.proj.weight")
    if pw is not None and choice.dino is not None and pw.shape[0] != choice.dino.embed_dim:
        hints.append(f"its DINOv2 width is {pw.shape[0]} (this build: {choice.dino.embed_dim})")
    lines = "\n".join(f"  {k}: checkpoint {c} vs model {m}" for k, c, m in bad[:8])
    more = f"\n  ... and {len(bad) - 8} more" if len(bad) > 8 else ""
    return (f"checkpoint {path!r} does not fit {choice.kind} (trunk {choice.trunk}): {len(bad)} "
            f"tensors have other shapes" + (f"; {'; '.join(hints)}" if hints else "") + ":\n"
            + lines + more)


def load_dense_checkpoint(model: nn.Module, choice: DenseChoice, path: str | Path,
                          allow_mismatch: bool = False) -> DenseLoadReport:
    """Load a user's checkpoint (authors' layout) into ``model``; clear errors on mismatch."""
    what = {"sam2-unet": "SAM2-UNet", "sam2-unext": "SAM2-UNeXT", "features": "SAM2"}[choice.kind]
    sd = read_state_dict(path, what, bare_ok=choice.kind != "features")
    report = DenseLoadReport(checkpoint=str(path))
    model_sd = model.state_dict()
    if choice.kind == "features":
        other = [k for k in sd if not k.startswith("image_encoder.")]
        report.unused_other_modules = len(other)
        sd = {k: v for k, v in sd.items() if k.startswith("image_encoder.")}
    bad = shape_mismatches(model_sd, sd)
    if bad:
        raise CheckpointError(_shape_message(bad, sd, choice, str(path)))
    report.missing = sorted(set(model_sd) - set(sd))
    report.unexpected = sorted(set(sd) - set(model_sd))
    if report.missing or report.unexpected:
        parts = [f"checkpoint {str(path)!r} keys do not match {choice.kind}:"]
        hint = _layout_hint(list(sd), choice)
        if report.missing:
            parts.append(f"  missing from the checkpoint ({len(report.missing)}):\n" + _listing(report.missing))
        if report.unexpected:
            parts.append(f"  not used by the model ({len(report.unexpected)}):\n" + _listing(report.unexpected))
        parts.append(f"  {hint}" if hint else
                     "  check --model/--trunk (and --dino-config/--dino-size), or pass "
                     "--allow-key-mismatch to load anyway")
        msg = "\n".join(parts)
        if not allow_mismatch:
            raise CheckpointError(msg)
        log.warning(msg)
    model.load_state_dict({k: v for k, v in sd.items() if k in model_sd}, strict=False)
    return report


def assemble_dense(choice: DenseChoice, checkpoint: Optional[str | Path] = None,
                   random_weights: bool = False, seed: int = 0,
                   allow_mismatch: bool = False) -> Tuple[nn.Module, DenseLoadReport]:
    """Build ``choice`` and fill its weights from ``checkpoint`` or seeded random values."""
    if random_weights and checkpoint:
        raise UsageError("--random-weights and --checkpoint exclude each other; pass one")
    if not random_weights and checkpoint is None:
        file = {"sam2-unet": "SAM2-UNet-20.pth (from the authors' train.py)",
                "sam2-unext": "SAM2-UNeXT-20.pth (from the authors' train.py)",
                "features": "an official SAM2 checkpoint, e.g. sam2.1_hiera_tiny.pt"}[choice.kind]
        raise UsageError(f"no checkpoint: pass --checkpoint {file}, or --random-weights to try "
                         "the tool without one")
    model = build_dense(choice, seed)
    if random_weights:
        randomize_dense_(model, seed)
        spread_logits_(model, choice, seed)
        return model, DenseLoadReport(random_weights=True)
    return model, load_dense_checkpoint(model, choice, checkpoint, allow_mismatch)
