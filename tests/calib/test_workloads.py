"""Calibration workloads by folder kind: data layouts, generated clips, what each stage is fed."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from calib.episodes import CalibrationDataError
from calib.record import record_stage_inputs
from calib.workloads import (PromptWorkload, box_of, generate_clips, interior_point, load_images, load_prompt_data,
                             workload_for)
from runtime.core.folder import ModelFolder


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _object(size=64, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), bool)
    mask[10:30, 20:50] = True
    return img, mask


def test_interior_point_and_box():
    _, mask = _object()
    x, y = interior_point(mask)
    assert mask[int(y), int(x)] and box_of(mask) == [20.0, 10.0, 49.0, 29.0]


def test_generated_clips_move_and_are_deterministic():
    a, b = generate_clips(2, size=96, frames=4, seed=3), generate_clips(2, size=96, frames=4, seed=3)
    assert len(a) == 2 and all(len(c.frames) == 4 for c in a)
    assert all(np.array_equal(x, y) for c, d in zip(a, b) for x, y in zip(c.frames, d.frames))
    assert a[0].first_mask.any() and not np.array_equal(a[0].frames[0], a[0].frames[3])


def test_stock_layout_loads(tmp_path):
    img, mask = _object()
    _save(tmp_path / "images" / "cat.png", img)
    _save(tmp_path / "images" / "cat_mask.png", mask.astype(np.uint8) * 255)
    for t in range(3):
        _save(tmp_path / "clips" / "walk" / f"{t:05d}.jpg", np.roll(img, t, axis=1))
    _save(tmp_path / "clips" / "walk" / "00000_mask.png", mask.astype(np.uint8) * 255)
    images, clips = load_prompt_data(tmp_path)
    assert len(images) == 1 and np.array_equal(images[0][1], mask)
    assert [c.name for c in clips] == ["walk"] and len(clips[0].frames) == 3
    w = workload_for("sam2", tmp_path, 64, generated=3)
    assert isinstance(w, PromptWorkload) and "1 prompted images and 1 clips" in w.desc


@pytest.mark.parametrize("files,message", [
    ({"images/cat.png": "img"}, "has no mask: add cat_mask.png"),
    ({"images/cat.png": "img", "images/cat_mask.png": "empty"}, "is empty"),
    ({"images/cat.png": "img", "images/cat_mask.png": "small"}, "a mask must have its image's size"),
    ({"clips/a/00000.jpg": "img", "clips/a/00001.jpg": "img"}, "exactly one mask, of the first frame"),
    ({"clips/a/00000.jpg": "img", "clips/a/00001_mask.png": "mask"}, "exactly one mask, of the first frame"),
    ({"other/x.png": "img"}, "has neither images/ nor clips/"),
])
def test_stock_layout_errors_name_the_problem(tmp_path, files, message):
    img, mask = _object()
    arrays = {"img": img, "mask": mask.astype(np.uint8) * 255, "empty": np.zeros((64, 64), np.uint8),
              "small": np.full((32, 32), 255, np.uint8)}
    for rel, kind in files.items():
        _save(tmp_path / rel, arrays[kind])
    with pytest.raises(CalibrationDataError, match=message):
        load_prompt_data(tmp_path)


def test_dense_images_folder(tmp_path):
    with pytest.raises(CalibrationDataError, match="holds no"):
        load_images(tmp_path)
    _save(tmp_path / "a.jpg", _object()[0])
    assert load_images(tmp_path)[0].shape == (64, 64, 3)


def test_stock_folders_calibrate_on_clicks_boxes_and_tracking(stock_sam2_factory, tmp_path):
    """The mask decoder sees clicks (label 1) and box corners (labels 2, 3); memory attention sees tracking."""
    _, _, engines = stock_sam2_factory("2.1")
    folder = ModelFolder.read(engines)
    w = workload_for("sam2", None, 256, generated=3)
    samples, logits = record_stage_inputs(folder, w, tmp_path / "cache")
    labels = {int(v) for f in samples["mask_decoder"] for v in np.unique(f["point_labels"])}
    assert {1, 2, 3} <= labels
    frames = sum(len(c.frames) for c in w.clips)
    assert len(logits) == 3 * len(w.images) + frames and len(samples["memory_attention"]) >= frames - 1
