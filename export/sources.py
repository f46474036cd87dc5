"""What a few-shot build is made from: the checkpoint files, and the settings they imply.

The user brings a SAM2 checkpoint and (for few-shot) a SANSA adapter file;
each says what it is:

- the SAM2 file its model size (Hiera width and depth) and its version
  (SAM2.1 files have parameters 2.0 files lack);
- the adapter file, when SANSA's training wrote it, the ``args`` it was
  trained with (``sam2_version`` = the model size, ``channel_factor``,
  ``adaptformer_stages``), and in any case its tensor shapes (which blocks
  carry an adapter, and how wide each bottleneck is).

:func:`resolve_sources` turns these and the command-line flags into one
:class:`Sources`. A setting a file implies is the default; a flag that
contradicts a file, or two files that contradict each other, is a
:class:`~export.checkpoints.CheckpointError` naming both values. SANSA's
adapters were trained on frozen SAM2.0 (``sam2_hiera_*.pt``, 2024-07): a
SAM2.1 base for them is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from export.adapters import (DEFAULT_CHANNEL_FACTOR, DEFAULT_STAGES, AdapterConfig,
                             adapter_widths, bottleneck, channel_factor_fit, describe_fit)
from export.checkpoints import (Checkpoint, CheckpointError, read_checkpoint, sam2_model_of,
                                sam2_version_of, sansa_settings)
from export.models import ModelChoice
from runtime.errors import UsageError

DEFAULT_MODEL = "tiny"
DEFAULT_VERSION = "2.1"  # without a SAM2 file (random weights)
SANSA_VERSION = "2.0"


@dataclass
class Sources:
    """The resolved model, adapters and the files they load from.

    ``origin[setting]`` says where each setting came from (for the log and
    the manifest): ``"--flag"``, ``"adapter file args"``, ``"SAM2 checkpoint"``,
    ``"adapter shapes"`` or ``"default"``.
    """

    choice: ModelChoice
    adapters: Optional[AdapterConfig]
    sam2: Optional[Checkpoint] = None
    adapter: Optional[Checkpoint] = None
    origin: Dict[str, str] = field(default_factory=dict)


# -------------------------------------------------- Hiera layout of a SAM2 file
def _block_index(key: str) -> Optional[int]:
    m = re.match(r"image_encoder\.trunk\.blocks\.(\d+)\.", key)
    return int(m.group(1)) if m else None


def block_dims_in(sd) -> Dict[int, int]:
    """``{block: input dim}`` of the Hiera trunk in a SAM2 state dict (``norm1`` widths)."""
    return {i: int(v.shape[0]) for k, v in sd.items()
            for i in [_block_index(k)] if i is not None and k.endswith(".norm1.weight")}


def block_stages(sd) -> Dict[int, int]:
    """``{block: 0-based stage}``: a new stage starts at each block with a ``proj`` (dim change)."""
    blocks = sorted(block_dims_in(sd))
    starts = {i for k in sd for i in [_block_index(k)] if i is not None and k.endswith(f"blocks.{i}.proj.weight")}
    stage, out = 0, {}
    for i in blocks:
        if i in starts:
            stage += 1
        out[i] = stage
    return out


# ----------------------------------------------------------------- resolution
def _pick(name: str, flag_name: str, flag: Any, found: Sequence[Tuple[str, Any]], default: Any,
          origin: Dict[str, str], show=repr) -> Any:
    """The setting: the flag if given, else the first file's value, else ``default``.

    Every file value must agree with the flag and with each other.
    """
    values = ([(flag_name, flag)] if flag is not None else []) + [f for f in found if f[1] is not None]
    for (src_a, a), (src_b, b) in zip(values, values[1:]):
        if a != b:
            fix = (f"drop {flag_name} (the file says what it is)" if src_a == flag_name
                   else "use files that belong together")
            raise CheckpointError(f"{name}: {src_a} says {show(a)} but {src_b} says {show(b)}; {fix}")
    if values:
        origin[name] = values[0][0]
        return values[0][1]
    origin[name] = "default"
    return default


def _check_widths(cf: float, src: str, widths: Dict[int, int], dims: Dict[int, int], path: str) -> None:
    wrong = {i: b for i, b in widths.items() if bottleneck(dims[i], cf) != b}
    if not wrong:
        return
    i, b = next(iter(wrong.items()))
    fits = describe_fit(widths, dims)
    raise CheckpointError(
        f"adapter checkpoint {path!r}: block {i} has a bottleneck of {b} channels, but {src} "
        f"{cf} gives int({dims[i]} * {cf}) = {bottleneck(dims[i], cf)} ({len(wrong)} of "
        f"{len(widths)} adapters differ); {fits}: pass --channel-factor accordingly "
        "(SANSA: 0.3 strict few-shot, 0.8 generalist/universal)")


def resolve_sources(*, image_size: int, model: Optional[str] = None, sam2_version: Optional[str] = None,
                    adapter_stages: Optional[Tuple[int, ...]] = None,
                    channel_factor: Optional[float] = None,
                    sam2_checkpoint: Optional[Path] = None, adapter_checkpoint: Optional[Path] = None,
                    no_adapters: bool = False, random_weights: bool = False) -> Sources:
    """Read the checkpoints once and resolve the build's settings (see the module docstring).

    ``None`` for a flag means "not given". Raises ``CheckpointError`` (file
    problems, contradictions) or ``ValueError`` (bad values).
    """
    if random_weights and (sam2_checkpoint or adapter_checkpoint):
        raise UsageError("--random-weights and checkpoint paths exclude each other; pass one")
    if no_adapters and adapter_checkpoint:
        raise UsageError("--no-adapters and --adapter-checkpoint exclude each other; pass one")
    sam2 = read_checkpoint(sam2_checkpoint, "SAM2") if sam2_checkpoint else None
    adapter = read_checkpoint(adapter_checkpoint, "adapter", sansa=True) if adapter_checkpoint else None
    origin: Dict[str, str] = {}
    file_args = sansa_settings(adapter.args) if adapter else {}
    if adapter is not None and not adapter_widths(adapter.state_dict):
        raise CheckpointError(
            f"adapter checkpoint {str(adapter.path)!r} holds no adapter weights (no key "
            "'...trunk.blocks.N.adapter.down_proj.weight'; found e.g. "
            f"{sorted(adapter.state_dict)[:3]}): pass SANSA's adapter file (its main.py saves "
            "{'model': adapter weights, 'args': ...})")
    choice_name = _pick("model", "--model", model,
                        [("the adapter file's args (sam2_version)", file_args.get("model")),
                         ("the SAM2 checkpoint", sam2_model_of(sam2.state_dict) if sam2 else None)],
                        DEFAULT_MODEL, origin)
    version = _pick("SAM2 version", "--sam2-version", sam2_version,
                    [("the SAM2 checkpoint's keys", sam2_version_of(sam2.state_dict) if sam2 else None)],
                    DEFAULT_VERSION, origin)
    choice = ModelChoice(choice_name, version, image_size)
    if no_adapters:
        return Sources(choice, None, sam2, None, origin)
    if adapter is not None and version != SANSA_VERSION:
        raise CheckpointError(
            f"SANSA adapters were trained on frozen SAM2.0 (sam2_hiera_*.pt, the 2024-07 files), but "
            f"the base is SAM{version} ({origin['SAM2 version']}); SAM2.1's image encoder gives "
            f"features the adapters never saw. Pass the SAM2.0 checkpoint ({ModelChoice(choice_name, '2.0').checkpoint_name})")
    widths = adapter_widths(adapter.state_dict) if adapter else {}
    layout_stages = None
    if adapter is not None and sam2 is not None:
        stages_of = block_stages(sam2.state_dict)
        layout_stages = tuple(sorted({stages_of[i] for i in widths if i in stages_of})) or None
    stages = _pick("adapter stages", "--adapter-stages", adapter_stages,
                   [("the adapter file's args (adaptformer_stages)", file_args.get("adapter_stages")),
                    ("the adapter weights", layout_stages)],
                   DEFAULT_STAGES, origin, show=lambda s: ",".join(map(str, s)))
    cf = _pick("channel factor", "--channel-factor", channel_factor,
               [("the adapter file's args (channel_factor)", file_args.get("channel_factor"))],
               None, origin)
    dims = block_dims_in(sam2.state_dict) if sam2 is not None else {}
    widths = {i: b for i, b in widths.items() if i in dims}
    if cf is None and widths:
        known, _ = channel_factor_fit(widths, dims)
        if len(known) == 1:
            cf, origin["channel factor"] = known[0], "the adapter shapes"
    if cf is None:
        cf, origin["channel factor"] = DEFAULT_CHANNEL_FACTOR, "default"
    if widths:
        _check_widths(cf, origin["channel factor"], widths, dims, str(adapter.path))
    if cf <= 0:
        raise UsageError(f"--channel-factor must be > 0, got {cf}")
    return Sources(choice, AdapterConfig(tuple(stages), float(cf)), sam2, adapter, origin)
