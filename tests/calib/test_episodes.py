"""Calibration episodes: folder layout round trip and the synthetic generator."""

import numpy as np

from calib.episodes import generate_episodes, load_episodes, save_episodes


def test_generated_episodes_shape_and_determinism():
    a = generate_episodes(3, size=64, refs=2, targets=1, seed=1)
    b = generate_episodes(3, size=64, refs=2, targets=1, seed=1)
    assert len(a) == 3
    for ea, eb in zip(a, b):
        assert ea.fingerprint() == eb.fingerprint()
        assert len(ea.references) == 2 and len(ea.targets) == 1
        for img, m in ea.references:
            assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
            assert m.shape == img.shape[:2] and m.any() and not m.all()


def test_folder_round_trip(tmp_path):
    eps = generate_episodes(2, size=48, refs=2, targets=2)
    save_episodes(tmp_path, eps)
    back = load_episodes(tmp_path, min_episodes=2)
    assert [e.name for e in back] == [e.name for e in eps]
    for e0, e1 in zip(eps, back):
        assert e0.fingerprint() == e1.fingerprint()


def test_numeric_reference_order(tmp_path):
    eps = generate_episodes(1, size=32, refs=1, targets=1)
    save_episodes(tmp_path, eps)
    ep = tmp_path / eps[0].name
    for i in (2, 10):
        (ep / f"ref_{i}.png").write_bytes((ep / "ref_0.png").read_bytes())
        (ep / f"ref_{i}_mask.png").write_bytes((ep / "ref_0_mask.png").read_bytes())
    assert len(load_episodes(tmp_path)[0].references) == 3
