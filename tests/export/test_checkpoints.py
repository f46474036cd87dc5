"""Real-format checkpoints: written, loaded by the real loader, exported, same outputs."""

import pytest
import torch

from export.adapters import fold_adapter_scale
from export.assembly import AdapterConfig, assemble, build_model, randomize_, write_random_checkpoints
from export.checkpoints import CheckpointError
from export.models import ModelChoice
from export.onnx_export import export_onnx, ort_session, torch_outputs
from runtime.core.compare import rel_l2 as relative_l2
from runtime.core.spec import example_feeds
from export.subnets import build_subnets
from runtime.sam2.spec import stage_specs

CHOICE = ModelChoice("tiny", "2.1", 256)


@pytest.fixture(scope="module")
def random_ckpts(tmp_path_factory):
    return write_random_checkpoints(CHOICE, tmp_path_factory.mktemp("ckpt"), seed=3)


def test_official_format_on_disk(random_ckpts):
    sam2_path, adapter_path = random_ckpts
    sam2 = torch.load(sam2_path, weights_only=True)
    adapters = torch.load(adapter_path, weights_only=False)  # SANSA's file holds an argparse.Namespace
    assert set(sam2) == {"model"} and set(adapters) == {"model", "optimizer", "lr_scheduler", "epoch", "args"}
    assert "sam_mask_decoder.obj_score_token.weight" in sam2["model"]  # stock SAM2 keys
    assert not any(".adapter." in k for k in sam2["model"])
    assert adapters["model"] and all(k.startswith("module.sam.image_encoder.") and ".adapter." in k
                                     for k in adapters["model"])


def test_round_trip_gives_the_in_memory_outputs(random_ckpts, tmp_path):
    sam2_path, adapter_path = random_ckpts
    loaded, report = assemble(CHOICE, AdapterConfig(), sam2_path, adapter_path)
    assert not report.missing and not report.unexpected
    assert report.ignored_disabled_heads  # the object-score head the few-shot config drops
    original = build_model(CHOICE, AdapterConfig(), fewshot=False, seed=3)
    randomize_(original, 3)
    for m in (loaded, original):
        fold_adapter_scale(m)
    specs = stage_specs(256)
    ours, theirs = build_subnets(loaded), build_subnets(original)
    # Stages whose weights do not depend on the object-score head must agree exactly.
    for stage, axes in (("image_encoder", {"batch": 1}), ("memory_encoder", {"batch": 1}),
                        ("memory_attention", {"objects": 2, "num_mem": 2, "num_ptr": 2})):
        path = export_onnx(ours[stage], specs[stage], tmp_path / f"{stage}.onnx")
        feeds = example_feeds(specs[stage], axes, seed=5)
        got = ort_session(path).run(None, feeds)
        ref = torch_outputs(theirs[stage], specs[stage], feeds)
        for g, (name, r) in zip(got, ref.items()):
            assert relative_l2(g, r) <= 1e-5, (stage, name)
    dec_loaded = {k: v for k, v in loaded.sam_mask_decoder.state_dict().items()}
    dec_orig = original.sam_mask_decoder.state_dict()
    for k, v in dec_loaded.items():
        assert torch.equal(v, dec_orig[k]), k


def test_missing_keys_are_named(random_ckpts, tmp_path):
    sam2_path, adapter_path = random_ckpts
    sd = torch.load(sam2_path, weights_only=True)["model"]
    del sd["memory_encoder.out_proj.weight"]
    broken = tmp_path / "broken.pt"
    torch.save({"model": sd}, broken)
    with pytest.raises(CheckpointError, match="memory_encoder.out_proj.weight"):
        assemble(CHOICE, AdapterConfig(), broken, adapter_path)
    model, report = assemble(CHOICE, AdapterConfig(), broken, adapter_path, allow_mismatch=True)
    assert report.missing == ["memory_encoder.out_proj.weight"]


def test_wrong_channel_factor_is_a_shape_error(random_ckpts):
    sam2_path, adapter_path = random_ckpts
    with pytest.raises(CheckpointError, match="other shapes"):
        assemble(CHOICE, AdapterConfig(channel_factor=0.8), sam2_path, adapter_path)


def test_sam2_0_configs_build_too():
    model, _ = assemble(ModelChoice("tiny", "2.0", 256), random_weights=True)
    assert not model.add_tpos_enc_to_obj_ptrs and not model.pred_obj_scores
    x = torch.rand(1, 3, 256, 256)
    assert model.forward_image(x)["vision_features"].shape == (1, 256, 16, 16)
