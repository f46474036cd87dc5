"""Shared fixtures: a tiny random-weight model and its exported engines folder.

Small inputs keep the suite fast on 2 cores: hiera-tiny at 256 px, random
weights with a fixed seed (the same seed gives the same weights in the
PyTorch reference and in the exported graphs).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SMALL = 256


def build_engines(out: Path, *extra: str, size: int = SMALL, version: str = "2.1") -> Path:
    from export.build import main

    rc = main(["--precision", "fp32", "--model", "tiny", "--sam2-version", version,
               "--image-size", str(size), "--random-weights", "--skip-tensorrt",
               "--out", str(out), *extra])
    assert rc == 0
    return out


@pytest.fixture(scope="session")
def tiny_engines(tmp_path_factory) -> Path:
    """hiera-tiny SAM2.1 + adapters, 256 px, random weights (seed 0), ONNX only."""
    return build_engines(tmp_path_factory.mktemp("engines") / "tiny-256")


@pytest.fixture(scope="session")
def tiny_model():
    """The PyTorch model the ``tiny_engines`` folder was exported from."""
    from export.assembly import assemble
    from export.models import ModelChoice

    model, _ = assemble(ModelChoice("tiny", "2.1", SMALL), random_weights=True, seed=0)
    return model
