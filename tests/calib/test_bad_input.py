"""Unusable calibration folders and settings fail early, naming the problem."""

import numpy as np
import pytest
from PIL import Image

from calib.build import parse_stages
from calib.episodes import CalibrationDataError, generate_episodes, load_episodes, save_episodes
from calib.quantize import QuantizationError, _calibration_method, quantize_stage


def _one(tmp_path):
    save_episodes(tmp_path, generate_episodes(1, size=32, refs=1, targets=1))
    return tmp_path / next(p.name for p in tmp_path.iterdir())


def test_missing_and_empty_folder(tmp_path):
    with pytest.raises(CalibrationDataError, match="does not exist"):
        load_episodes(tmp_path / "nope")
    with pytest.raises(CalibrationDataError, match="no episode sub-folders"):
        load_episodes(tmp_path)


def test_loose_images_hint(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(CalibrationDataError, match="own sub-folder"):
        load_episodes(tmp_path)


def test_image_without_mask(tmp_path):
    ep = _one(tmp_path)
    (ep / "ref_0_mask.png").unlink()
    with pytest.raises(CalibrationDataError, match="have no mask"):
        load_episodes(tmp_path)


def test_mask_size_mismatch(tmp_path):
    ep = _one(tmp_path)
    Image.fromarray(np.full((5, 7), 255, np.uint8)).save(ep / "ref_0_mask.png")
    with pytest.raises(CalibrationDataError, match="must have its image's size"):
        load_episodes(tmp_path)


def test_empty_mask_no_target_bad_name(tmp_path):
    ep = _one(tmp_path)
    img = np.asarray(Image.open(ep / "ref_0.png"))
    Image.fromarray(np.zeros(img.shape[:2], np.uint8)).save(ep / "ref_0_mask.png")
    with pytest.raises(CalibrationDataError, match="is empty"):
        load_episodes(tmp_path)
    Image.fromarray(np.zeros(img.shape[:2], np.uint8)).save(ep / "ref_0_msk.png")
    with pytest.raises(CalibrationDataError, match="ref_0_msk.png"):
        load_episodes(tmp_path)
    (ep / "ref_0_msk.png").unlink()
    (ep / "notes.txt").write_text("x")
    with pytest.raises(CalibrationDataError, match="unexpected file"):
        load_episodes(tmp_path)
    for p in list(ep.iterdir()):
        if not p.name.startswith("ref_0.") :
            p.unlink()
    with pytest.raises(CalibrationDataError):
        load_episodes(tmp_path)


def test_too_few_episodes(tmp_path):
    _one(tmp_path)
    with pytest.raises(CalibrationDataError, match="at least 4"):
        load_episodes(tmp_path, min_episodes=4)


def test_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="unknown stage"):
        parse_stages("image_encoder,encoderr")
    assert parse_stages("all") == ["image_encoder", "memory_encoder", "memory_attention", "mask_decoder"]
    with pytest.raises(ValueError, match="calibration method"):
        _calibration_method("kl")
    with pytest.raises(QuantizationError, match="no calibration samples"):
        quantize_stage(tmp_path / "x.onnx", tmp_path / "y.onnx", [], stage="x")
    with pytest.raises(CalibrationDataError):
        generate_episodes(0)
