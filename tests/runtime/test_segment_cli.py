"""`python -m runtime.cli.segment` on image files."""

import cv2
import numpy as np

from runtime.cli.segment import main


def test_segment_cli_writes_masks_and_overlays(tiny_engines, tmp_path, capsys):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    mask = np.zeros((120, 160), np.uint8)
    mask[20:70, 30:90] = 255
    cv2.imwrite(str(tmp_path / "ref.png"), img)
    cv2.imwrite(str(tmp_path / "ref_mask.png"), mask)
    cv2.imwrite(str(tmp_path / "t1.jpg"), rng.integers(0, 256, (90, 200, 3), dtype=np.uint8))
    out = tmp_path / "out"
    rc = main(["--model-dir", str(tiny_engines), "--ref", f"cat={tmp_path}/ref.png:{tmp_path}/ref_mask.png",
               "--target", str(tmp_path / "t1.jpg"), "--out", str(out), "--backend", "onnxruntime"])
    assert rc == 0
    m = cv2.imread(str(out / "t1_cat_mask.png"), cv2.IMREAD_GRAYSCALE)
    assert m.shape == (90, 200) and set(np.unique(m)) <= {0, 255}
    assert cv2.imread(str(out / "t1_overlay.png")).shape == (90, 200, 3)
    assert "per-stage median (ms)" in capsys.readouterr().out


def test_segment_cli_bad_reference(tiny_engines, tmp_path, capsys):
    rc = main(["--model-dir", str(tiny_engines), "--ref", f"{tmp_path}/no.png:{tmp_path}/no_mask.png",
               "--target", f"{tmp_path}/no.png", "--out", str(tmp_path / "o")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_segment_cli_scribble_reference(tiny_engines, tmp_path, capsys):
    """--ref-scribble: the stroke image's pixels are the reference's clicks (as FewShotSegmenter.add_reference)."""
    from runtime import FewShotSegmenter

    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    stroke = np.zeros((120, 160), np.uint8)
    cv2.line(stroke, (40, 30), (90, 60), 255, 1)
    target = rng.integers(0, 256, (90, 200, 3), dtype=np.uint8)
    for name, a in (("ref.png", img), ("stroke.png", stroke), ("t.png", target)):
        cv2.imwrite(str(tmp_path / name), a if a.ndim == 2 else a[:, :, ::-1])
    out = tmp_path / "out"
    rc = main(["--model-dir", str(tiny_engines), "--ref-scribble", f"obj={tmp_path}/ref.png:{tmp_path}/stroke.png",
               "--target", str(tmp_path / "t.png"), "--out", str(out), "--backend", "onnxruntime"])
    assert rc == 0
    got = cv2.imread(str(out / "t_obj_mask.png"), cv2.IMREAD_GRAYSCALE) > 0
    with FewShotSegmenter.load(tiny_engines, backend="onnxruntime") as seg:
        seg.add_reference(img, scribble=stroke > 0, concept="obj")
        want = seg.segment(target)["obj"].mask
    assert np.array_equal(got, want)


def test_segment_cli_needs_a_reference(tiny_engines, tmp_path, capsys):
    rc = main(["--model-dir", str(tiny_engines), "--target", f"{tmp_path}/t.png", "--out", str(tmp_path / "o")])
    assert rc == 2 and "no reference" in capsys.readouterr().err


def test_segment_cli_batches_concepts_on_request(tiny_engines, tmp_path, capsys):
    rng = np.random.default_rng(1)
    cv2.imwrite(str(tmp_path / "ref.png"), rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    mask = np.zeros((120, 160), np.uint8)
    mask[20:70, 30:90] = 255
    cv2.imwrite(str(tmp_path / "ref_mask.png"), mask)
    cv2.imwrite(str(tmp_path / "t.png"), rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))
    ref = f"{tmp_path}/ref.png:{tmp_path}/ref_mask.png"
    masks = {}
    for name, extra in (("one", []), ("batched", ["--objects-per-call", "2", "--pad-objects"])):
        out = tmp_path / name
        assert main(["--model-dir", str(tiny_engines), "--ref", f"a={ref}", "--ref", f"b={ref}",
                     "--target", str(tmp_path / "t.png"), "--out", str(out), "--backend", "onnxruntime",
                     *extra]) == 0
        masks[name] = [cv2.imread(str(out / f"t_{c}_mask.png"), cv2.IMREAD_GRAYSCALE) for c in "ab"]
    for a, b in zip(masks["one"], masks["batched"]):
        np.testing.assert_array_equal(a, b)
    rc = main(["--model-dir", str(tiny_engines), "--ref", ref, "--target", str(tmp_path / "t.png"),
               "--out", str(tmp_path / "bad"), "--objects-per-call", "0"])
    assert rc == 2 and "objects_per_call must be an integer from 1 to 8" in capsys.readouterr().err
