"""Shared fixtures: a tiny random-weight model and its exported model folder.

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
def plain_engines(tmp_path_factory) -> Path:
    """As ``tiny_engines`` but ``--plain-export``: sam2's order of operations, nothing folded."""
    return build_engines(tmp_path_factory.mktemp("engines") / "tiny-256-plain", "--plain-export")


def _rebuilt(tiny_engines, tmp_path_factory, name: str, *extra: str) -> Path:
    """A copy of ``tiny_engines`` re-built with ``extra`` (the FP32 stages are reused)."""
    import shutil

    out = tmp_path_factory.mktemp(name) / "tiny-256"
    shutil.copytree(tiny_engines, out)
    return build_engines(out, *extra)


@pytest.fixture(scope="session")
def fp16_engines(tiny_engines, tmp_path_factory) -> Path:
    """``tiny_engines`` at ``--precision fp16``: every stage's FP16 file, measured and gated."""
    return _rebuilt(tiny_engines, tmp_path_factory, "fp16", "--precision", "fp16")


@pytest.fixture(scope="session")
def int8_engines(tiny_engines, tmp_path_factory) -> Path:
    """``tiny_engines`` at ``--precision int8``: Q/DQ INT8 + FP16 memory attention, FP16 files elsewhere."""
    return _rebuilt(tiny_engines, tmp_path_factory, "int8", "--precision", "int8", "--int8-stages", "memory_attention")


CPU_INT8_STAGES = ("memory_attention", "mask_decoder")


@pytest.fixture(scope="session")
def cpu_int8_engines(tiny_engines, tmp_path_factory) -> Path:
    """A copy of ``tiny_engines`` re-built with ``--cpu-int8-stages memory_attention,mask_decoder``
    (the FP32 stages are reused; only the dynamic-INT8 step and its gate run)."""
    return _rebuilt(tiny_engines, tmp_path_factory, "cpu-int8", "--cpu-int8-stages", ",".join(CPU_INT8_STAGES))


@pytest.fixture(scope="session")
def tiny_model():
    """The PyTorch model the ``tiny_engines`` folder was exported from."""
    from export.assembly import assemble
    from export.models import ModelChoice

    model, _ = assemble(ModelChoice("tiny", "2.1", SMALL), random_weights=True, seed=0)
    return model


def stock_sam2(root: Path, version: str):
    """(ModelChoice, official-format checkpoint, model folder) of stock SAM2 tiny at 256 px.

    A random checkpoint in Meta's format (object-score bias raised by 2 so the
    random model sees objects: with random weights the score is nearly constant
    and for SAM2.0 negative, which would leave every mask empty), exported with
    ``--stock-sam2 --no-adapters`` from that file.
    """
    from export.assembly import write_random_checkpoints
    from export.build import main
    from export.models import ModelChoice

    choice = ModelChoice("tiny", version, SMALL)
    ckpt, _ = write_random_checkpoints(choice, root / "ckpt", adapters=None, seed=0, object_score_bias=2.0)
    engines = root / "engines"
    assert main(["--precision", "fp32", "--model", "tiny", "--sam2-version", version,
                 "--image-size", str(SMALL), "--stock-sam2", "--no-adapters",
                 "--sam2-checkpoint", str(ckpt), "--skip-tensorrt", "--out", str(engines)]) == 0
    return choice, ckpt, engines


@pytest.fixture(scope="session")
def stock_sam2_factory(tmp_path_factory):
    """``version -> stock_sam2(...)``, built once per session and version."""
    built = {}

    def get(version: str = "2.1"):
        if version not in built:
            built[version] = stock_sam2(tmp_path_factory.mktemp(f"stock-{version}"), version)
        return built[version]

    return get


def tiny_layernorm_onnx(path: Path) -> Path:
    """x[B,3,8,8] -> Conv(3->4) -> LayerNorm over channels (opset 17) -> Softmax -> y."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
        numpy_helper.from_array((1 + 0.1 * rng.standard_normal(4)).astype(np.float32), "g"),
        numpy_helper.from_array((0.1 * rng.standard_normal(4)).astype(np.float32), "beta"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("LayerNormalization", ["t", "g", "beta"], ["n"], axis=-1, epsilon=1e-5),
        helper.make_node("Softmax", ["n"], ["s"], axis=-1),
        helper.make_node("Transpose", ["s"], ["y"], perm=[0, 3, 1, 2]),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 8, 8])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def folder_with(stages, kind: str = "sam2-fewshot"):
    """An in-memory model folder whose stages have the given ONNX variants.

    ``stages``: ``{stage: {variant: info dict}}``; no file exists (for the code
    that only reads the records, e.g. which variant a stage runs).
    """
    from runtime.core.folder import FileRecord, Manifest, ModelFolder, ModelRecord, StageRecord, onnx_name

    recs = {s: StageRecord({v: FileRecord(onnx_name(s, v), "0" * 64, dict(info)) for v, info in vs.items()})
            for s, vs in stages.items()}
    return ModelFolder(Path("in-memory"), Manifest(kind=kind, model=ModelRecord("tiny", 256), model_config={},
                                                   specs={}, stages=recs, precision="fp32"))
