"""Dense models: the authors' key layouts, checkpoint round trips, and clear mismatch errors."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from export.checkpoints import CheckpointError
from export.dense.dinov2 import TINY_DINO, DinoConfig, DinoFeatures
from export.dense.models import (
    DenseChoice,
    assemble_dense,
    build_dense,
    load_dense_checkpoint,
    write_random_checkpoint,
)

UNET = DenseChoice.default("sam2-unet", trunk="tiny", image_size=64)
UNEXT = DenseChoice.default("sam2-unext", trunk="tiny", image_size=64, dino=TINY_DINO)
FEATS = DenseChoice.default("features", trunk="tiny", image_size=64, fpn=True)


def test_sam2_unet_keys_are_the_authors():
    """Keys as SAM2UNet.state_dict() names them (Adapter-wrapped trunk blocks, RFB, Up, heads)."""
    sd = build_dense(UNET).state_dict()
    tops = {k.split(".")[0] for k in sd}
    assert tops == {"encoder", "rfb1", "rfb2", "rfb3", "rfb4", "up1", "up2", "up3", "up4",
                    "side1", "side2", "head"}
    for k in ("encoder.pos_embed", "encoder.pos_embed_window", "encoder.patch_embed.proj.weight",
              "encoder.blocks.0.prompt_learn.0.weight", "encoder.blocks.0.prompt_learn.2.bias",
              "encoder.blocks.0.block.attn.qkv.weight", "encoder.blocks.1.block.proj.weight",
              "rfb1.branch0.0.conv.weight", "rfb1.branch3.3.bn.running_var", "rfb4.conv_cat.conv.weight",
              "rfb2.conv_res.bn.num_batches_tracked", "up1.conv.double_conv.0.weight",
              "up4.conv.double_conv.4.running_mean", "side1.weight", "head.bias"):
        assert k in sd, k
    assert not any(k.startswith("encoder.neck") for k in sd)
    # RFB input widths follow the trunk (Hiera-T: 96/192/384/768; Hiera-L: 144/288/576/1152).
    assert [sd[f"rfb{i}.conv_res.conv.weight"].shape[1] for i in range(1, 5)] == [96, 192, 384, 768]
    assert sd["encoder.blocks.0.prompt_learn.0.weight"].shape == (32, 96)
    assert sd["up1.conv.double_conv.0.weight"].shape == (64, 128, 3, 3)


def test_sam2_unext_keys_are_the_authors():
    sd = build_dense(UNEXT).state_dict()
    for k in ("sam.blocks.0.prompt_learn.0.weight", "sam.blocks.11.block.mlp.layers.1.weight",
              "dino.model.cls_token", "dino.model.pos_embed", "dino.model.patch_embed.proj.weight",
              "dino.model.blocks.1.ls2.gamma", "dino.model.blocks.0.attn.qkv.bias",
              "dino.model.blocks.0.mlp.fc2.weight", "align1.weight", "align4.bias", "reduce3.weight",
              "up4.conv.double_conv.0.weight", "up1.conv.double_conv.3.weight", "head.weight"):
        assert k in sd, k
    assert not any(k.startswith(("dino.model.norm.", "dino.model.head", "side")) for k in sd)
    assert sd["dino.model.pos_embed"].shape == (1, 1 + 8 * 8, 64)
    assert sd["align2.weight"].shape == (192, 64, 1, 1)
    assert sd["reduce4.weight"].shape == (128, 2 * 768, 1, 1)
    assert sd["up4.conv.double_conv.0.weight"].shape == (64, 128, 3, 3)  # Up(128, 128): mid 64
    assert sd["up3.conv.double_conv.0.weight"].shape == (128, 256, 3, 3)


def test_dinov2_keys_and_grid_of_vit_large_448():
    """timm's vit_large_patch14_dinov2 at img_size 448 (keys of its features_only wrapper)."""
    with torch.device("meta"):
        sd = DinoFeatures(DinoConfig()).state_dict()
    assert sd["model.pos_embed"].shape == (1, 1025, 1024)
    assert sd["model.patch_embed.proj.weight"].shape == (1024, 3, 14, 14)
    assert sum(k.endswith("ls1.gamma") for k in sd) == 24
    assert sd["model.blocks.23.mlp.fc1.weight"].shape == (4096, 1024)
    assert len(sd) == 340  # timm 1.0.31 FeatureGetterNet: the same count


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed")
def test_dinov2_matches_timm():
    import timm

    ref = timm.create_model("vit_large_patch14_dinov2", features_only=True, img_size=112, out_indices=1,
                            embed_dim=64, depth=2, num_heads=2, pretrained=False).eval()
    ours = DinoFeatures(TINY_DINO).eval()
    assert set(ref.state_dict()) == set(ours.state_dict())
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in ref.state_dict().items()}
    ref.load_state_dict(sd)
    ours.load_state_dict(sd)
    x = torch.randn(2, 3, 112, 112, generator=g)
    with torch.no_grad():
        a, b = ref(x)[-1], ours(x)[-1]
    assert ((a - b).norm() / a.norm()).item() < 1e-6


@pytest.mark.parametrize("choice", [UNET, UNEXT, FEATS], ids=["unet", "unext", "features"])
def test_random_checkpoint_in_authors_layout_loads_back(tmp_path, choice):
    path = write_random_checkpoint(choice, tmp_path / "ckpt.pth", seed=3)
    raw = torch.load(path, weights_only=True)
    if choice.kind == "features":
        assert set(raw) == {"model"} and "image_encoder.trunk.pos_embed" in raw["model"]
    else:  # a bare state dict, as the authors' train.py saves
        assert all(isinstance(v, torch.Tensor) for v in raw.values())
    loaded, report = assemble_dense(choice, path)
    assert not report.missing and not report.unexpected
    if choice.kind == "features":
        assert report.unused_other_modules == 2
    # assemble_dense(path) starts from seed 0's default init: equality with seed 3's random
    # weights shows every tensor came from the file.
    rnd, _ = assemble_dense(choice, random_weights=True, seed=3)
    for k, v in rnd.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_module_prefix_from_ddp_is_stripped(tmp_path):
    model = build_dense(UNET)
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, tmp_path / "ddp.pth")
    assert not load_dense_checkpoint(build_dense(UNET, seed=1), UNET, tmp_path / "ddp.pth").missing


def test_missing_and_unexpected_keys_are_named(tmp_path):
    sd = build_dense(UNET).state_dict()
    del sd["rfb2.conv_cat.bn.running_mean"]
    sd["extra.head.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as e:
        load_dense_checkpoint(build_dense(UNET), UNET, tmp_path / "bad.pth")
    msg = str(e.value)
    assert "rfb2.conv_cat.bn.running_mean" in msg and "extra.head.weight" in msg
    assert "--allow-key-mismatch" in msg
    report = load_dense_checkpoint(build_dense(UNET), UNET, tmp_path / "bad.pth", allow_mismatch=True)
    assert report.missing == ["rfb2.conv_cat.bn.running_mean"]


def test_wrong_model_checkpoints_say_which_model_they_are(tmp_path):
    torch.save(build_dense(UNET).state_dict(), tmp_path / "unet.pth")
    with pytest.raises(CheckpointError, match="looks like a SAM2-UNet checkpoint: pass --model sam2-unet"):
        load_dense_checkpoint(build_dense(UNEXT), UNEXT, tmp_path / "unet.pth")
    sam2 = {"image_encoder.trunk." + k: v for k, v in build_dense(UNET).encoder.state_dict().items()}
    torch.save({"model": sam2}, tmp_path / "sam2.pt")
    with pytest.raises(CheckpointError, match="official SAM2 checkpoint"):
        load_dense_checkpoint(build_dense(UNET), UNET, tmp_path / "sam2.pt")


def test_shape_mismatches_name_the_setting(tmp_path):
    torch.save(build_dense(UNEXT).state_dict(), tmp_path / "unext.pth")
    other = DenseChoice.default("sam2-unext", trunk="tiny", image_size=64,
                                dino=DinoConfig(**{**TINY_DINO.__dict__, "img_size": 98}))
    with pytest.raises(CheckpointError, match=r"8x8 grid \(--dino-size 112\)"):
        load_dense_checkpoint(build_dense(other), other, tmp_path / "unext.pth")
    torch.save(build_dense(UNET).state_dict(), tmp_path / "unet.pth")
    bplus = DenseChoice.default("sam2-unet", trunk="base_plus", image_size=64)
    with pytest.raises(CheckpointError, match="Hiera tiny or small: pass --trunk"):
        load_dense_checkpoint(build_dense(bplus), bplus, tmp_path / "unet.pth")


def test_unreadable_and_absent_checkpoints(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a weights-only PyTorch checkpoint|truncated, corrupted"):
        load_dense_checkpoint(build_dense(UNET), UNET, tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_dense_checkpoint(build_dense(UNET), UNET, tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="--random-weights"):
        assemble_dense(UNET)


@pytest.mark.fullsize
def test_full_size_sam2_unet_has_the_papers_shapes():
    """Hiera-L SAM2-UNet at 352 px: 48 adapters, RFB widths 144..1152, three 352x352 outputs."""
    unet = build_dense(DenseChoice.default("sam2-unet"))
    sd = unet.state_dict()
    assert [sd[f"rfb{i}.conv_res.conv.weight"].shape[1] for i in range(1, 5)] == [144, 288, 576, 1152]
    assert sum(k.endswith("prompt_learn.0.weight") for k in sd) == 48
    with torch.no_grad():
        outs = unet(torch.randn(1, 3, 352, 352))
    assert [tuple(o.shape) for o in outs] == [(1, 1, 352, 352)] * 3
