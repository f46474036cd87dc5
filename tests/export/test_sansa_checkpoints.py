"""SANSA's adapter files and Meta's SAM2.0/2.1 checkpoints as their authors write them.

The adapter file is what SANSA's ``main.py`` saves (``write_sansa_checkpoint``):
``{'model': {'sam.image_encoder.trunk.blocks.N.adapter....': tensor},
'optimizer', 'lr_scheduler', 'epoch', 'args': argparse.Namespace}``, with
DDP's ``module.`` in front or not. ``export.build`` must take it with no
model flags, read its ``args`` as defaults, refuse contradictions, and never
run code from a file.
"""

from __future__ import annotations

import argparse
import json
import os

import pytest
import torch

from export.adapters import AdapterConfig, adapter_state_dict, fold_adapter_scale
from export.assembly import build_model, randomize_, write_random_checkpoints, write_sansa_checkpoint
from export.build import main
from export.checkpoints import CheckpointError, read_checkpoint, sam2_model_of, sam2_version_of
from export.models import ModelChoice
from export.onnx_export import ort_session, torch_outputs
from runtime.core.compare import rel_l2 as relative_l2
from runtime.core.spec import example_feeds
from export.subnets import build_subnets
from runtime.sam2.spec import stage_specs

SIZE = 256
CHOICE20 = ModelChoice("tiny", "2.0", SIZE)
FLAGS = ["--image-size", str(SIZE), "--precision", "fp32", "--skip-tensorrt"]  # none describes the model


def run(argv, capsys):
    """Exit status and stderr of ``export.build``; bad input is one line, never a traceback."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


@pytest.fixture(scope="module")
def sansa_files(tmp_path_factory):
    """SAM2.0 tiny (Meta's format) + a SANSA adapter file with channel factor 0.8 (not the default)."""
    root = tmp_path_factory.mktemp("sansa")
    sam2, adapter = write_random_checkpoints(CHOICE20, root, adapters=AdapterConfig((2, 3), 0.8), seed=3)
    return root, sam2, adapter


def test_the_file_is_sansas_format(sansa_files):
    _, sam2, adapter = sansa_files
    raw = torch.load(adapter, weights_only=False)
    assert set(raw) == {"model", "optimizer", "lr_scheduler", "epoch", "args"}
    assert isinstance(raw["args"], argparse.Namespace) and raw["args"].sam2_version == "tiny"
    assert all(k.startswith("module.sam.image_encoder.trunk.blocks.") and ".adapter." in k for k in raw["model"])
    assert {"state", "param_groups"} <= set(raw["optimizer"]) and "last_epoch" in raw["lr_scheduler"]
    # and the plain weights-only load torch does by default refuses it: that is what the loader fixes
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(adapter, weights_only=True)
    ck = read_checkpoint(adapter, "adapter", sansa=True)
    assert ck.args["channel_factor"] == 0.8 and set(ck.extras) == {"optimizer", "lr_scheduler", "epoch"}
    assert all(k.startswith("image_encoder.trunk.blocks.") for k in ck.state_dict)
    sd = read_checkpoint(sam2, "SAM2").state_dict
    assert sam2_version_of(sd) == "2.0" and sam2_model_of(sd) == "tiny"


@pytest.fixture(scope="module")
def built(sansa_files):
    root, sam2, adapter = sansa_files
    out = root / "out"
    assert main(["--adapter-checkpoint", str(adapter), "--sam2-checkpoint", str(sam2), *FLAGS,
                 "--out", str(out)]) == 0
    return out


def test_build_with_no_model_flags_takes_the_files_settings(built):
    m = json.loads((built / "manifest.json").read_text())
    assert m["status"] == "complete"
    assert (m["model"]["name"], m["model"]["sam2_version"]) == ("tiny", "2.0")
    assert m["model"]["adapters"]["channel_factor"] == 0.8 and m["model"]["adapters"]["stages"] == [2, 3]
    assert m["provenance"]["settings_from"]["channel factor"].startswith("the adapter file's args")
    assert m["provenance"]["settings_from"]["SAM2 version"] == "the SAM2 checkpoint's keys"
    assert all(r["parity"]["passed"] for r in m["stages"].values())


def test_build_reproduces_the_in_memory_model(built):
    """The exported graphs compute what the model the files were written from computes."""
    original = build_model(CHOICE20, AdapterConfig((2, 3), 0.8), fewshot=True, seed=3)
    stock = build_model(CHOICE20, AdapterConfig((2, 3), 0.8), fewshot=False, seed=3)
    randomize_(stock, 3)  # what write_random_checkpoints wrote
    original.load_state_dict(stock.state_dict(), strict=False)
    assert adapter_state_dict(original)  # adapters present, with the file's weights
    fold_adapter_scale(original)
    nets, specs = build_subnets(original), stage_specs(SIZE)
    for stage, axes in (("image_encoder", {"batch": 1}), ("memory_attention", {"objects": 2, "num_mem": 2, "num_ptr": 3}),
                        ("mask_decoder", {"objects": 2, "num_points": 3})):
        feeds = example_feeds(specs[stage], axes, seed=7)
        got = ort_session(built / f"{stage}.onnx").run(None, feeds)
        ref = torch_outputs(nets[stage], specs[stage], feeds)
        worst = max(relative_l2(g, r) for g, r in zip(got, ref.values()))
        print(f"{stage}: rel L2 vs the in-memory model {worst:.1e}")
        assert worst <= 1e-5, stage


def test_module_and_plain_prefixes_load_the_same(sansa_files, tmp_path):
    root, sam2, adapter = sansa_files
    ddp = read_checkpoint(adapter, "adapter", sansa=True).state_dict
    plain = write_sansa_checkpoint(tmp_path / "plain.pth", ddp, CHOICE20, AdapterConfig((2, 3), 0.8), ddp=False)
    assert all(k.startswith("sam.") for k in torch.load(plain, weights_only=False)["model"])
    again = read_checkpoint(plain, "adapter", sansa=True).state_dict
    assert again.keys() == ddp.keys() and all(torch.equal(again[k], ddp[k]) for k in ddp)


def test_a_file_with_other_objects_is_refused_and_nothing_runs(sansa_files, tmp_path, capsys):
    _, sam2, _ = sansa_files
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    evil = tmp_path / "evil.pth"
    torch.save({"model": {}, "args": Payload()}, evil)
    code, err = run(["--adapter-checkpoint", str(evil), "--sam2-checkpoint", str(sam2), *FLAGS,
                     "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "weights-only load does not allow" in err and "nothing in the file was executed" in err
    assert "system" in err and not marker.exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize("flags, fragment", [
    (["--channel-factor", "0.3"], "channel factor: --channel-factor says 0.3 but the adapter file's args"),
    (["--model", "large"], "model: --model says 'large' but the adapter file's args (sam2_version) says 'tiny'"),
    (["--adapter-stages", "3"], "adapter stages: --adapter-stages says 3 but the adapter file's args"),
    (["--sam2-version", "2.1"], "SAM2 version: --sam2-version says '2.1' but the SAM2 checkpoint's keys says '2.0'"),
])
def test_flags_that_contradict_the_files(sansa_files, tmp_path, capsys, flags, fragment):
    _, sam2, adapter = sansa_files
    code, err = run(["--adapter-checkpoint", str(adapter), "--sam2-checkpoint", str(sam2), *FLAGS, *flags,
                     "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and fragment in err and not (tmp_path / "o").exists()
    assert "Traceback" not in err


def test_wrong_channel_factor_names_the_one_that_fits(sansa_files, tmp_path, capsys):
    """A file without args, weights of factor 0.5: the default 0.3 does not fit; the message says what does."""
    _, sam2, adapter = sansa_files
    model = build_model(CHOICE20, AdapterConfig((2, 3), 0.5), fewshot=True, seed=1)
    bare = tmp_path / "bare.pth"
    torch.save({"model": {"sam." + k: v for k, v in adapter_state_dict(model).items()}}, bare)
    code, err = run(["--adapter-checkpoint", str(bare), "--sam2-checkpoint", str(sam2), *FLAGS,
                     "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "bottleneck" in err and "default 0.3" in err
    assert "a channel factor in [0.5000, 0.5013) fits" in err
    # With the right flag it builds (the file's shapes then agree).
    assert main(["--adapter-checkpoint", str(bare), "--sam2-checkpoint", str(sam2), *FLAGS,
                 "--channel-factor", "0.5", "--out", str(tmp_path / "ok")]) == 0


def test_channel_factor_is_read_from_the_shapes_without_args(sansa_files, tmp_path, capsys):
    _, sam2, adapter = sansa_files
    sd = torch.load(adapter, weights_only=False)["model"]
    bare = tmp_path / "no_args.pth"
    torch.save({"model": sd}, bare)
    from export.sources import resolve_sources

    src = resolve_sources(image_size=SIZE, sam2_checkpoint=sam2, adapter_checkpoint=bare)
    assert src.adapters == AdapterConfig((2, 3), 0.8)
    assert src.origin["channel factor"] == "the adapter shapes" and src.origin["adapter stages"] == "the adapter weights"


def test_a_sam2_1_base_for_sansa_adapters_is_refused(sansa_files, tmp_path, capsys):
    _, _, adapter = sansa_files
    sam21, _ = write_random_checkpoints(ModelChoice("tiny", "2.1", SIZE), tmp_path, adapters=None)
    code, err = run(["--adapter-checkpoint", str(adapter), "--sam2-checkpoint", str(sam21), *FLAGS,
                     "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "trained on frozen SAM2.0" in err and "sam2_hiera_tiny.pt" in err


def test_sam2_version_and_size_are_read_from_the_checkpoint(tmp_path, capsys):
    for version in ("2.0", "2.1"):
        ckpt, _ = write_random_checkpoints(ModelChoice("tiny", version, SIZE), tmp_path / version, adapters=None)
        sd = read_checkpoint(ckpt, "SAM2").state_dict
        assert sam2_version_of(sd) == version and sam2_model_of(sd) == "tiny"


def test_an_empty_checkpoint_is_a_clear_error(tmp_path):
    empty = tmp_path / "sam2_hiera_tiny.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        read_checkpoint(empty, "SAM2")
