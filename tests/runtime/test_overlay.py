"""The camera overlay: blend inside the mask, a 2-pixel outline on its boundary, nothing else touched."""

import numpy as np
import pytest

from runtime.camera.overlay import draw_masks, mask_box


def _frame(h=120, w=160):
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_blend_outline_and_untouched_pixels():
    import cv2

    f = _frame()
    m = np.zeros(f.shape[:2], bool)
    m[30:70, 40:100] = True
    m[45:50, 60:65] = False  # a hole
    colour = (0, 200, 255)
    out = draw_masks(f.copy(), {"a": m}, {"a": colour}, alpha=0.45, labels=False)
    ring = cv2.morphologyEx(m.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    inside = m & ~ring
    want = f.astype(np.float32) * 0.55 + np.float32(colour) * 0.45
    assert np.abs(out[inside].astype(np.float32) - want[inside]).max() <= 1.0
    assert (out[ring] == colour).all()  # outline, around the hole too
    assert (out[~m & ~ring] == f[~m & ~ring]).all()


def test_noisy_mask_and_edges_and_empty():
    f = _frame()
    m = np.random.default_rng(1).random(f.shape[:2]) > 0.5  # touches every border
    out = draw_masks(f.copy(), {"a": m, "none": np.zeros_like(m)}, {"a": (255, 0, 0)})
    assert out.shape == f.shape and not (out == f).all()
    assert (draw_masks(f.copy(), {"e": np.zeros_like(m)}, {}) == f).all()


@pytest.mark.parametrize("rows,cols", [((3, 9), (5, 7)), ((0, 1), (0, 160))])
def test_mask_box(rows, cols):
    m = np.zeros((120, 160), bool)
    m[rows[0]:rows[1], cols[0]:cols[1]] = True
    assert mask_box(m) == (rows[0], rows[1], cols[0], cols[1])
    assert mask_box(np.zeros_like(m)) is None
