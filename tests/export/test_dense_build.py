"""``export.build --model sam2-unet|sam2-unext|features``: parity, manifest, FP16, errors.

Builds are hiera-tiny at 64 px (the 2-block test DINOv2 for SAM2-UNeXT) with
random weights; ``-s`` prints the measured figures.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.build import main
from runtime.core.compare import FP32_PARITY
from runtime.core.folder import ModelFolder
from tests.dense_helpers import SIZE, built, choice_for, torch_model

FP32_PARITY_GATE = FP32_PARITY.max_rel_l2


def _manifest(name, folder=None):
    return ModelFolder.read(folder or built(name)).manifest


@pytest.mark.parametrize("name", ["unet", "unext-split-fp16", "features-fpn"])
def test_build_is_verified_against_pytorch(name):
    m = _manifest(name)
    assert m.status == "complete"
    for part, rec in m.stages.items():
        p = rec.parity
        print(f"{name} {part}: rel L2 {p['rel_l2']:.2e}, max abs {p['max_abs']:.2e}")
        assert p["passed"] and p["rel_l2"] <= FP32_PARITY_GATE
        assert [c["axes"]["batch"] for c in p["cases"]] == [1, 2]
        assert (built(name) / rec.files["fp32"].file).is_file()
    e2e = m.checks["end_to_end"]
    print(f"{name} end to end: {e2e}")
    assert e2e["rel_l2"] <= FP32_PARITY_GATE
    if name != "features-fpn":
        assert e2e["prob_max_abs"] < 1e-4 and e2e["mask_iou"] > 0.999
    assert m.tensorrt == {"built": False, "reason": "--skip-tensorrt"}


def test_manifest_records_the_model_and_parts():
    m = _manifest("unext-split-fp16")
    assert m.kind == "sam2-unext" and m.model.details["split"]
    assert m.model.details["parts"] == ["sam_encoder", "dino_encoder", "decoder"] == list(m.specs)
    assert m.model.details["dino"]["img_size"] == 112
    assert m.model_config == {"trunk_channels": [96, 192, 384, 768], "dino_dim": 64, "dino_grid": 8,
                              "dino_size": 112}
    assert {k: r.precision for k, r in m.stages.items()} == {
        "sam_encoder": "fp16", "dino_encoder": "fp32", "decoder": "fp16"}
    f = _manifest("features-fpn")
    assert f.model.details["outputs"] == ["trunk_s4", "trunk_s8", "trunk_s16", "trunk_s32",
                                          "fpn_s4", "fpn_s8", "fpn_s16"]
    assert "fp16" not in f.checks  # an fp32 build measures no fp16 policy


def test_fp16_files_are_written_and_measured():
    m = _manifest("unext-split-fp16")
    fp16 = m.checks["fp16"]
    print(f"fp16 files: {fp16}")
    assert fp16["files"] == {"sam_encoder": "sam_encoder.fp16.onnx", "decoder": "decoder.fp16.onnx"}
    for part in ("sam_encoder", "decoder"):
        rec = m.stages[part].files["fp16"]
        assert (built("unext-split-fp16") / rec.file).is_file() and rec.info["weights"]["float16"] > 0
        assert m.stages[part].measured["fp16"]["prob_max_abs"] == fp16["prob_max_abs"]
    assert "fp16" not in m.stages["dino_encoder"].files  # an fp32 part has no FP16 file
    # FP16 rounding is visible (the check is not comparing FP32 with itself) and small.
    assert 1e-5 < fp16["rel_l2"] < 0.05
    assert fp16["prob_max_abs"] <= fp16["gate"]["max_abs"] and fp16["passed"]


def test_fp16_gate_refuses_the_folder_and_names_the_part(tmp_path, monkeypatch, capsys):
    import shutil

    import export.dense.build as dense_build
    from runtime.core.compare import ProbabilityGate

    d = tmp_path / "unext"
    shutil.copytree(built("unext-split-fp16"), d)
    monkeypatch.setattr(dense_build, "DENSE_FP16", ProbabilityGate(1e-9, 0.98))  # no FP16 result passes
    rc = main(["--model", "sam2-unext", "--dino-config", "tiny", "--split", "--precision", "fp16",
               "--trunk", "tiny", "--image-size", str(SIZE), "--random-weights", "--max-batch", "2",
               "--skip-tensorrt", "--out", str(d)])
    m = _manifest(None, d)
    assert rc == 1 and m.status == "failed" and not m.checks["fp16"]["passed"]
    assert "up to date, reusing sam_encoder.onnx" in capsys.readouterr().out
    assert "--split --fp32-parts" in m.status_reason
    sug = m.checks["fp16"]["suggestion"]
    assert "sam_encoder gives" in sug and "dino_encoder gives" in sug
    from runtime.dense.segmenter import DenseSegmenter
    from runtime.errors import ModelFolderError

    with pytest.raises(ModelFolderError, match="status='failed'"):
        DenseSegmenter.load(d)


def test_onnx_matches_the_pytorch_model_on_a_fresh_input():
    """Independent of the build's own check: the exported decoder vs the PyTorch decode()."""
    from export.onnx_export import ort_session

    model = torch_model("unext-split-fp16")
    d = built("unext-split-fp16")
    g = torch.Generator().manual_seed(7)
    x = torch.rand(1, 3, SIZE, SIZE, generator=g)
    with torch.no_grad():
        from export.dense.blocks import Normalize

        xn = Normalize()(x)
        ref = model(xn)
        feats = [f.numpy() for f in model.sam(xn)] + [model.dino_features(xn).numpy()]
    names = ["hiera_s4", "hiera_s8", "hiera_s16", "hiera_s32", "dino_feat"]
    got = ort_session(d / "decoder.onnx").run(["logits"], dict(zip(names, feats)))[0]
    assert np.linalg.norm(got - ref.numpy()) / np.linalg.norm(ref.numpy()) < 1e-5


def test_rebuild_reuses_verified_parts(capsys):
    d = built("unet")
    before = (d / "manifest.json").read_text()
    rc = main(["--model", "sam2-unet", "--precision", "fp32", "--trunk", "tiny", "--image-size",
               str(SIZE), "--random-weights", "--max-batch", "2", "--skip-tensorrt", "--out", str(d)])
    assert rc == 0 and "up to date, reusing model.onnx" in capsys.readouterr().out
    import json

    assert json.loads(before)["stages"] == json.loads((d / "manifest.json").read_text())["stages"]


def test_builds_from_a_checkpoint_in_the_authors_layout(tmp_path):
    from export.dense.models import write_random_checkpoint

    choice = choice_for("features-fpn")
    ckpt = write_random_checkpoint(choice, tmp_path / "sam2.1_hiera_tiny.pt", seed=0)
    rc = main(["--model", "features", "--trunk", "tiny", "--image-size", "32", "--precision", "fp32",
               "--checkpoint", str(ckpt), "--max-batch", "1", "--skip-tensorrt", "--out",
               str(tmp_path / "out")])
    m = _manifest(None, tmp_path / "out")
    assert rc == 0 and m.status == "complete"
    assert m.provenance["checkpoints"]["model"]["path"] == str(ckpt) and not m.model.random_weights


@pytest.mark.parametrize("args, message", [
    (["--model", "sam2-unet", "--precision", "int8", "--random-weights"], "int8 is not supported"),
    (["--model", "features", "--split", "--random-weights"], "cannot be split"),
    (["--model", "sam2-unet", "--fp32-parts", "encoder", "--random-weights"], "needs --split"),
    (["--model", "sam2-unet", "--split", "--fp32-parts", "dino_encoder", "--random-weights"],
     "no such part"),
    (["--model", "sam2-unet", "--fpn", "--random-weights"], "only applies to --model features"),
    (["--model", "sam2-unet", "--dino-size", "224", "--random-weights"], "only apply to --model sam2-unext"),
    (["--model", "sam2-unet", "--image-size", "350", "--random-weights"], "not a multiple of 32"),
    (["--model", "features", "--max-frame-side", "640", "--random-weights"], "--max-frame-side does not apply"),
    (["--model", "sam2-unet", "--max-frame-side", "8", "--random-weights"], "largest frame side must be"),
    (["--model", "sam2-unext", "--dino-size", "450", "--random-weights"], "multiple of its patch size"),
    (["--model", "sam2-unet", "--trunk", "tiny"], "no checkpoint: pass --checkpoint SAM2-UNet-20.pth"),
    (["--model", "sam2-unet", "--trunk", "tiny", "--checkpoint", "/nonexistent.pth"], "does not exist"),
])
def test_bad_options_fail_with_a_message(tmp_path, capsys, args, message):
    assert main([*args, "--skip-tensorrt", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_part_without_the_file_of_its_precision_is_refused(tmp_path, monkeypatch):
    """Engines are built from the file of each part's precision; none is built from another file."""
    import shutil

    import export.trt_build as trt_build
    from export.engines import build_engines
    from runtime.core.backends import cuda, tensorrt as trt_backend
    from runtime.errors import ModelFolderError

    d = tmp_path / "unext"
    shutil.copytree(built("unext-split-fp16"), d)
    folder = ModelFolder.read(d)
    monkeypatch.setattr(trt_build, "tensorrt_status", lambda: (True, "TensorRT 10.3.0 on Orin"))
    monkeypatch.setattr(trt_backend, "load_tensorrt", lambda: type("trt", (), {"__version__": "10.3.0"}))
    monkeypatch.setattr(cuda, "gpu_record", lambda: {"name": "Orin", "compute_capability": "8.7"})
    for st in folder.manifest.stages.values():
        st.files.pop("fp16", None)
    with pytest.raises(ModelFolderError, match="'sam_encoder' is to run at fp16 but has no fp16 file"):
        build_engines(folder, None, skip=False, log=lambda m: None)
