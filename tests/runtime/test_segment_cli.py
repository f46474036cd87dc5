"""`python -m runtime.segment` on image files."""

import cv2
import numpy as np

from runtime.segment import main


def test_segment_cli_writes_masks_and_overlays(tiny_engines, tmp_path, capsys):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    mask = np.zeros((120, 160), np.uint8)
    mask[20:70, 30:90] = 255
    cv2.imwrite(str(tmp_path / "ref.png"), img)
    cv2.imwrite(str(tmp_path / "ref_mask.png"), mask)
    cv2.imwrite(str(tmp_path / "t1.jpg"), rng.integers(0, 256, (90, 200, 3), dtype=np.uint8))
    out = tmp_path / "out"
    rc = main(["--engines", str(tiny_engines), "--ref", f"cat={tmp_path}/ref.png:{tmp_path}/ref_mask.png",
               "--target", str(tmp_path / "t1.jpg"), "--out", str(out), "--backend", "onnxruntime"])
    assert rc == 0
    m = cv2.imread(str(out / "t1_cat_mask.png"), cv2.IMREAD_GRAYSCALE)
    assert m.shape == (90, 200) and set(np.unique(m)) <= {0, 255}
    assert cv2.imread(str(out / "t1_overlay.png")).shape == (90, 200, 3)
    assert "per-stage median (ms)" in capsys.readouterr().out


def test_segment_cli_bad_reference(tiny_engines, tmp_path, capsys):
    rc = main(["--engines", str(tiny_engines), "--ref", f"{tmp_path}/no.png:{tmp_path}/no_mask.png",
               "--target", f"{tmp_path}/no.png", "--out", str(tmp_path / "o")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
