"""Which SAM2 configs exist and the overrides the few-shot method applies to them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List
from runtime.errors import UsageError

MODEL_NAMES = ("tiny", "small", "base_plus", "large")
SAM2_VERSIONS = ("2.0", "2.1")
_CONFIG_SUFFIX = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}
# Official checkpoint file names, for messages that tell the user what to pass.
_CHECKPOINT_NAMES = {
    "2.0": "sam2_hiera_{name}.pt",
    "2.1": "sam2.1_hiera_{name}.pt",
}

# SANSA's changes to the SAM2 config (docs/inference-contract.md, "The model").
FEWSHOT_OVERRIDES = (
    "++model.pred_obj_scores=false",
    "++model.pred_obj_scores_mlp=false",
    "++model.fixed_no_obj_ptr=false",
)


@dataclass(frozen=True)
class ModelChoice:
    """A SAM2 size + version, plus the image size to export at."""

    name: str = "tiny"
    sam2_version: str = "2.1"
    image_size: int = 1024

    def __post_init__(self):
        if self.name not in MODEL_NAMES:
            raise UsageError(
                f"unknown model {self.name!r}; choose one of {', '.join(MODEL_NAMES)}"
            )
        if self.sam2_version not in SAM2_VERSIONS:
            raise UsageError(
                f"unknown SAM2 version {self.sam2_version!r}; choose one of "
                f"{', '.join(SAM2_VERSIONS)}"
            )

    @property
    def config_name(self) -> str:
        """Hydra config name inside the ``sam2`` package."""
        suffix = _CONFIG_SUFFIX[self.name]
        if self.sam2_version == "2.0":
            return f"configs/sam2/sam2_hiera_{suffix}.yaml"
        return f"configs/sam2.1/sam2.1_hiera_{suffix}.yaml"

    @property
    def checkpoint_name(self) -> str:
        return _CHECKPOINT_NAMES[self.sam2_version].format(name=self.name)

    def size_overrides(self) -> List[str]:
        """Overrides that set the input resolution everywhere the config fixes it."""
        e = self.image_size // 16
        ma = "model.memory_attention.layer"
        return [
            f"++model.image_size={self.image_size}",
            f"++{ma}.self_attention.feat_sizes=[{e},{e}]",
            f"++{ma}.cross_attention.feat_sizes=[{e},{e}]",
        ]
