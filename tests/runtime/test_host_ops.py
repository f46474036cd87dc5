"""Host-side pieces against their torch / sam2 originals."""

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from runtime.sam2.memory import select_memories, select_pointers, sine_pe_1d
from runtime.sam2.inputs import mask_downsample
from runtime.core.resize import resize_bilinear, upsample_bilinear


@pytest.mark.parametrize("src,dst", [((480, 640), (256, 256)), ((1080, 1920), (1024, 1024)),
                                     ((90, 70), (256, 256)), ((256, 256), (97, 181)),
                                     ((256, 256), (720, 1280))])
@pytest.mark.parametrize("antialias", [False, True])
def test_resize_matches_torch_interpolate(src, dst, antialias):
    x = np.random.default_rng(0).random(src + (3,), dtype=np.float32)
    ref = F.interpolate(torch.from_numpy(x).permute(2, 0, 1)[None], size=dst, mode="bilinear",
                        align_corners=False, antialias=antialias)[0].permute(1, 2, 0).numpy()
    assert np.abs(resize_bilinear(x, dst, antialias=antialias) - ref).max() < 2e-5


@pytest.mark.parametrize("src,dst", [((256, 256), (1080, 1920)), ((256, 256), (720, 1280)),
                                     ((64, 64), (256, 256)), ((256, 256), (480, 640)),
                                     ((256, 256), (200, 300))])
def test_upsample_matches_torch_interpolate(src, dst):
    """Mask logits to the frame (OpenCV where both axes grow): within float rounding of torch's,
    and the same mask but for a few pixels on the zero crossing."""
    x = np.random.default_rng(1).standard_normal(src).astype(np.float32) * 5
    ref = F.interpolate(torch.from_numpy(x)[None, None], size=dst, mode="bilinear",
                        align_corners=False)[0, 0].numpy()
    got = upsample_bilinear(x, dst)
    assert got.shape == dst and got.dtype == np.float32
    assert np.abs(got - ref).max() < 1e-4 * np.abs(x).max()
    assert ((got > 0) != (ref > 0)).mean() < 1e-5


def _sam2_selection(k, num_maskmem=7, max_ptrs=16):
    """sam2's frame choice for target frame k, refs 0..k-1 with ref 0 the conditioning frame."""
    mems = [(0, num_maskmem - 1)]
    for t_pos in range(1, num_maskmem):
        prev = k - (num_maskmem - t_pos)
        if 1 <= prev < k:
            mems.append((prev, num_maskmem - t_pos - 1))
    ptrs = [(0, k)]
    for t_diff in range(1, min(k + 1, max_ptrs)):
        t = k - t_diff
        if t < 0:
            break
        if t >= 1:
            ptrs.append((t, t_diff))
    return mems, ptrs


@pytest.mark.parametrize("k", [1, 2, 6, 7, 8, 15, 16, 17, 30])
def test_memory_and_pointer_selection(k):
    mems, ptrs = _sam2_selection(k)
    assert select_memories(k, 7) == mems
    assert select_pointers(k, 16) == ptrs
    assert len(select_pointers(k, 16)) == min(k, 16)


def test_sine_pe_matches_sam2():
    from sam2.modeling.sam2_utils import get_1d_sine_pe

    pos = np.array([3, 1, 2, 0.5], np.float32) / 3
    ref = get_1d_sine_pe(torch.from_numpy(pos), dim=256).numpy()
    np.testing.assert_allclose(sine_pe_1d(pos, 256), ref, atol=1e-6)


def test_mask_downsample_matches_conv():
    conv = torch.nn.Conv2d(1, 1, 4, 4)
    hard = (np.random.default_rng(1).random((64, 64)) > 0.5).astype(np.float32)
    ref = conv(torch.from_numpy(hard)[None, None]).detach().numpy()
    got = mask_downsample(hard, conv.weight.detach().numpy(), conv.bias.detach().numpy())
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_runtime_never_imports_torch():
    code = ("import sys, runtime, runtime.cli.segment, runtime.sam2.tracker, runtime.sam2.predictor, "
            "runtime.core.backends.onnxruntime, "
            "runtime.core.backends.tensorrt, runtime.core.backends.cuda\n"
            "bad = [m for m in ('torch', 'sam2', 'export', 'calib') if m in sys.modules]\n"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bfloat16_rounding_matches_torch():
    from runtime.sam2.tracker import round_to_bfloat16

    x = np.random.default_rng(2).standard_normal(10000).astype(np.float32) * 10
    x[:4] = [0.0, -0.0, 1.00390625, 1.01171875]  # exact halfway cases: ties to even
    ref = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(round_to_bfloat16(x), ref)


@pytest.mark.parametrize("max_cond", [-1, 2, 3])
def test_closest_cond_frames_matches_sam2(max_cond):
    from sam2.modeling.sam2_utils import select_closest_cond_frames

    from runtime.sam2.memory import closest_cond_frames

    cond = {t: None for t in (0, 7, 12, 30, 31)}
    for frame_idx in (0, 5, 12, 20, 40):
        ref_sel, ref_unsel = select_closest_cond_frames(frame_idx, cond, max_cond)
        sel, unsel = closest_cond_frames(frame_idx, list(cond), max_cond)
        assert sorted(sel) == sorted(ref_sel) and sorted(unsel) == sorted(ref_unsel)


def _pillow(a: np.ndarray, hw, resample: str) -> np.ndarray:
    from PIL import Image

    return np.array(Image.fromarray(a).resize((hw[1], hw[0]), getattr(Image, resample.upper())))


@pytest.mark.parametrize("resample", ["bilinear", "bicubic"])
def test_pil_resize_is_pillow_to_the_pixel(resample):
    """resize_uint8_pil vs Pillow: each pass alone to the pixel at shrinking, growing and mixed
    sizes; both passes in Pillow 13's order (pil_vertical_first) to the pixel when the installed
    Pillow is 13.0 (tests/pillow_order.py), and in Pillow <= 12.1's order (horizontal first) as Pillow's passes one
    after the other. Tall shrinking shapes are where the two orders differ."""
    from runtime.core.resize import pil_vertical_first, resize_uint8_pil
    from tests.pillow_order import FITTED

    rng = np.random.default_rng(5)
    orders = []
    for (h, w), s in [((480, 640), 256), ((1080, 1920), 1024), ((90, 70), 256), ((300, 1000), 352),
                      ((1920, 1080), 512), ((640, 480), 512), ((640, 480), 1024), ((600, 500), 256),
                      ((700, 330), 352)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        np.testing.assert_array_equal(resize_uint8_pil(img, (h, s), resample), _pillow(img, (h, s), resample))
        np.testing.assert_array_equal(resize_uint8_pil(img, (s, w), resample), _pillow(img, (s, w), resample))
        twelve = _pillow(_pillow(img, (h, s), resample), (s, s), resample)
        np.testing.assert_array_equal(resize_uint8_pil(img, (s, s), resample, vertical_first=False), twelve)
        vertical = pil_vertical_first((h, w), (s, s))
        orders.append(vertical)
        if vertical:
            assert (resize_uint8_pil(img, (s, s), resample) != twelve).any(), (h, w, s)
        if FITTED:
            np.testing.assert_array_equal(resize_uint8_pil(img, (s, s), resample), _pillow(img, (s, s), resample),
                                          err_msg=str((h, w, s)))
    assert orders.count(True) == 3  # both orders are exercised


def test_video_frames_are_resized_as_sam2s_video_loader(tmp_path):
    """video_frame_to_model_input vs sam2's ``load_video_frames_from_jpg_images`` (mean 0, std 1,
    so its output is the resized frame / 255) on JPEG frames it reads: bit for bit."""
    from PIL import Image
    from sam2.utils.misc import load_video_frames_from_jpg_images

    from runtime.sam2.inputs import video_frame_to_model_input

    rng = np.random.default_rng(6)
    for h, w in [(480, 640), (200, 150), (256, 256)]:  # landscape shrink, growing, identity
        folder = tmp_path / f"{h}x{w}"
        folder.mkdir()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / "00000.jpg", quality=90)
        frame = np.array(Image.open(folder / "00000.jpg").convert("RGB"))
        ref, vh, vw = load_video_frames_from_jpg_images(str(folder), 256, True, img_mean=(0, 0, 0),
                                                        img_std=(1, 1, 1), compute_device=torch.device("cpu"))
        got = video_frame_to_model_input(frame, 256)
        assert (vh, vw) == (h, w) and got.dtype == np.float32
        np.testing.assert_array_equal(got, ref.numpy())
