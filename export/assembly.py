"""Assemble the model to export: SAM2 from the ``sam2`` configs + adapters + weights.

Everything here runs on a workstation (torch + sam2). The result is a
``sam2.modeling.sam2_base.SAM2Base`` in eval mode on the CPU, ready for the
sub-network wrappers in :mod:`export.subnets`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch

from export.adapters import (ADAPTER_ATTR, AdapterConfig, adapter_state_dict, adapter_widths, describe_fit,
                             insert_adapters)
from export.checkpoints import (
    SANSA_PREFIX,
    Checkpoint,
    CheckpointError,
    describe_shape_mismatch,
    read_checkpoint,
    save_checkpoint,
    shape_mismatches,
)
from export.models import FEWSHOT_OVERRIDES, ModelChoice
from runtime.core.spec import check_image_size
from runtime.errors import UsageError

log = logging.getLogger(__name__)

# Official checkpoints carry the object-score head; the few-shot overrides turn
# it off, so these keys are expected to be unused (and are reported as such).
_DISABLED_HEAD_PREFIXES = (
    "sam_mask_decoder.obj_score_token.",
    "sam_mask_decoder.pred_obj_score_head.",
    "no_obj_ptr",
)


@dataclass
class LoadReport:
    """What loading the checkpoints did, for the manifest and the console."""

    sam2_checkpoint: Optional[str] = None
    adapter_checkpoint: Optional[str] = None
    random_weights: bool = False
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    ignored_disabled_heads: List[str] = field(default_factory=list)


def build_model(
    choice: ModelChoice,
    adapters: Optional[AdapterConfig],
    fewshot: bool = True,
    seed: int = 0,
) -> torch.nn.Module:
    """Instantiate SAM2 from its Hydra config (weights: seeded random init).

    Stock SAM2 (``fewshot=False``) is built as sam2's official predictors build
    it (``apply_postprocessing=True``: the decoder's dynamic multimask via
    stability), so the manifest records the flags they run with.
    """
    check_image_size(choice.image_size)
    from sam2.build_sam import build_sam2

    overrides = choice.size_overrides() + (list(FEWSHOT_OVERRIDES) if fewshot else [])
    torch.manual_seed(seed)
    model = build_sam2(
        choice.config_name,
        ckpt_path=None,
        device="cpu",
        mode="eval",
        hydra_overrides_extra=overrides,
        apply_postprocessing=not fewshot,
    )
    if adapters is not None:
        insert_adapters(model.image_encoder.trunk, adapters.stages, adapters.channel_factor)
    return model.eval()


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Give near-zero parameters (zero embeddings, 1e-6 layer scales) random values.

    The default init leaves e.g. ``no_mem_embed`` at zero and ConvNeXt layer
    scales at 1e-6, which would hide errors in the paths they gate.
    """
    g = torch.Generator().manual_seed(seed)
    for _, p in sorted(model.named_parameters()):
        if p.numel() and p.abs().max() < 1e-4:
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


CheckpointLike = Union[str, Path, Checkpoint, None]


def _as_checkpoint(ckpt: CheckpointLike, what: str) -> Optional[Checkpoint]:
    if ckpt is None or isinstance(ckpt, Checkpoint):
        return ckpt
    return read_checkpoint(ckpt, what, sansa=what == "adapter")


def load_weights(
    model: torch.nn.Module,
    sam2_checkpoint: CheckpointLike,
    adapter_checkpoint: CheckpointLike,
    model_name: str,
    allow_mismatch: bool = False,
) -> LoadReport:
    """Load an official SAM2 checkpoint and a SANSA adapter checkpoint into ``model``.

    Each is a path or a :class:`Checkpoint` already read. Missing or
    unexpected keys are listed by name and are an error unless
    ``allow_mismatch``; shape mismatches are always an error (SANSA's own
    loader skips them silently, which runs a zero adapter).
    """
    sam2 = _as_checkpoint(sam2_checkpoint, "SAM2")
    adapter = _as_checkpoint(adapter_checkpoint, "adapter")
    report = LoadReport(
        sam2_checkpoint=str(sam2.path) if sam2 else None,
        adapter_checkpoint=str(adapter.path) if adapter else None,
    )
    model_sd = model.state_dict()
    adapter_keys = {k for k in model_sd if f".{ADAPTER_ATTR}." in k}
    provided: Dict[str, torch.Tensor] = {}
    for ckpt, what in ((sam2, "SAM2"), (adapter, "adapter")):
        if ckpt is None:
            continue
        sd, path = ckpt.state_dict, ckpt.path
        if what == "adapter" and not adapter_keys:
            raise CheckpointError(
                "an adapter checkpoint was given but the model has no adapters "
                "(--no-adapters); drop one of the two"
            )
        bad = shape_mismatches(model_sd, sd)
        if bad:
            hint = ""
            if what == "adapter":
                trunk = model.image_encoder.trunk
                widths = adapter_widths(sd)
                dims = {i: trunk.blocks[i].dim for i in widths if i < len(trunk.blocks)}
                hint = f"; the adapter bottlenecks say {describe_fit(widths, dims)}: pass --channel-factor accordingly"
            raise CheckpointError(describe_shape_mismatch(bad, sd, model_name, str(path), hint))
        for k, v in sd.items():
            if k in model_sd:
                provided[k] = v
            elif k.startswith(_DISABLED_HEAD_PREFIXES):
                report.ignored_disabled_heads.append(k)
            else:
                report.unexpected.append(f"{what}: {k}")
    expected = set(model_sd)
    if sam2 is None:
        expected &= adapter_keys
    if adapter is None:
        expected -= adapter_keys
    report.missing = sorted(expected - set(provided))
    if (report.missing or report.unexpected) and not allow_mismatch:
        raise CheckpointError(_mismatch_message(report))
    if report.missing or report.unexpected:
        log.warning(_mismatch_message(report))
    model.load_state_dict(provided, strict=False)
    return report


def _mismatch_message(report: LoadReport) -> str:
    def listing(keys):
        return "\n".join(f"    {k}" for k in keys[:10]) + (
            f"\n    ... and {len(keys) - 10} more" if len(keys) > 10 else ""
        )

    parts = ["checkpoint keys do not match the model:"]
    if report.missing:
        parts.append(f"  missing from the checkpoints ({len(report.missing)}):\n" + listing(report.missing))
    if report.unexpected:
        parts.append(f"  not used by the model ({len(report.unexpected)}):\n" + listing(report.unexpected))
    parts.append(
        "  check --model/--sam2-version/--adapter-stages/--channel-factor, or pass "
        "--allow-key-mismatch to load anyway"
    )
    return "\n".join(parts)


def assemble(
    choice: ModelChoice,
    adapters: Optional[AdapterConfig] = AdapterConfig(),
    sam2_checkpoint: CheckpointLike = None,
    adapter_checkpoint: CheckpointLike = None,
    random_weights: bool = False,
    seed: int = 0,
    allow_mismatch: bool = False,
    fewshot: bool = True,
) -> Tuple[torch.nn.Module, LoadReport]:
    """Build the model and fill its weights: from checkpoints (paths or :class:`Checkpoint`), or seeded random."""
    if random_weights and (sam2_checkpoint or adapter_checkpoint):
        raise UsageError("--random-weights and checkpoint paths exclude each other; pass one")
    if not random_weights and sam2_checkpoint is None:
        raise UsageError(
            f"no SAM2 checkpoint: pass --sam2-checkpoint {choice.checkpoint_name} "
            "(official file), or --random-weights to try the tool without one"
        )
    if not random_weights and adapters is not None and adapter_checkpoint is None:
        raise UsageError(
            "no adapter checkpoint: pass --adapter-checkpoint PATH, or --no-adapters "
            "to export plain SAM2"
        )
    model = build_model(choice, adapters, fewshot=fewshot, seed=seed)
    if random_weights:
        randomize_(model, seed)
        return model, LoadReport(random_weights=True)
    return model, load_weights(model, sam2_checkpoint, adapter_checkpoint, choice.name, allow_mismatch)


def write_random_checkpoints(
    choice: ModelChoice,
    out_dir: str | Path,
    adapters: Optional[AdapterConfig] = AdapterConfig(),
    seed: int = 0,
    ddp: bool = True,
    object_score_bias: float = 0.0,
) -> Tuple[Path, Optional[Path]]:
    """Write seeded random weights in the authors' formats; returns the two paths.

    The SAM2 file is made from the *stock* config (object-score head included),
    ``{"model": state_dict}`` as Meta's files are. The adapter file is what
    SANSA's ``main.py`` saves (:func:`write_sansa_checkpoint`), with DDP's
    ``module.`` prefix when ``ddp``, so tests exercise the real loader.
    ``object_score_bias`` is added to the object-score head's last bias: with
    random weights the score is nearly constant (for SAM2.0 negative, which
    leaves every mask empty); a positive offset makes the random model see
    objects, so that mask comparisons mean something.
    """
    out_dir = Path(out_dir)
    stock = build_model(choice, adapters, fewshot=False, seed=seed)
    randomize_(stock, seed)
    full = stock.state_dict()
    if object_score_bias:
        head = sorted(k for k in full if k.startswith("sam_mask_decoder.pred_obj_score_head.") and k.endswith(".bias"))
        full[head[-1]] = full[head[-1]] + object_score_bias
    ad = adapter_state_dict(stock)
    sam2_path = save_checkpoint(
        out_dir / choice.checkpoint_name, {k: v for k, v in full.items() if k not in ad}
    )
    adapter_path = None
    if adapters is not None:
        adapter_path = write_sansa_checkpoint(out_dir / f"adapter_{choice.name}.pth", ad, choice,
                                              adapters, ddp=ddp)
    return sam2_path, adapter_path


# SANSA's --sam2_version (model size) for this project's model names.
_SANSA_SIZE = {"tiny": "tiny", "base_plus": "base", "large": "large", "small": "small"}


def write_sansa_checkpoint(path: str | Path, adapter_sd: Dict[str, torch.Tensor], choice: ModelChoice,
                           adapters: AdapterConfig, ddp: bool = False, epoch: int = 4) -> Path:
    """An adapter file exactly as SANSA's ``main.py`` writes one.

    ``{'model': {'sam.' + key: tensor for the adapter keys}, 'optimizer':
    AdamW state, 'lr_scheduler': CosineAnnealingLR state, 'epoch': int,
    'args': argparse.Namespace}`` (keys ``module.sam....`` with ``ddp``); the
    ``args`` carry SANSA's option names and defaults (opts.py).
    """
    import argparse

    params = [torch.nn.Parameter(v.detach().clone()) for v in adapter_sd.values()]
    opt = torch.optim.AdamW([{"params": params, "initial_lr": 1e-4}], lr=1e-4, weight_decay=0.0,
                            betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    sched.step()
    args = argparse.Namespace(
        seed=0, device="cuda", resume="", output_dir="output/train_coco_f0", name_exp="train_coco_f0",
        data_root="data", dataset_file="coco", multi_train=["lvis", "coco", "ade20k", "paco_part"],
        ds_weight=[0.4, 0.45, 0.1, 0.05], num_workers=6, prompt="mask", shots=1, J=3, fold=0,
        sam2_version=_SANSA_SIZE[choice.name], adaptformer_stages=list(adapters.stages),
        channel_factor=adapters.channel_factor, lr=1e-4, weight_decay=0.0, epochs=5, start_epoch=0,
        clip_max_norm=0.1, batch_size=32, no_distributed=False, threshold=0.5, visualize=False,
        distributed=ddp, rank=0, world_size=2 if ddp else 1, gpu=0, dist_url="env://")
    prefix = ("module." if ddp else "") + SANSA_PREFIX
    return save_checkpoint(path, adapter_sd, prefix=prefix, optimizer=opt.state_dict(),
                           lr_scheduler=sched.state_dict(), epoch=epoch, args=args)

