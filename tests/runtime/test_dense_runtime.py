"""DenseSegmenter / FeatureExtractor against the PyTorch models, loaders, inputs, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.dense_helpers import SIZE, built, natural_images, torch_model

ROOT = Path(__file__).resolve().parents[2]


def _image(h=50, w=83, seed=0):
    """A non-square uint8 RGB image with structure (gradients, a disc) and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    disc = ((yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (h / 4) ** 2) * 120.0
    img = np.stack([xx * 255.0 / w, yy * 255.0 / h, disc], -1) + rng.normal(0, 20, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _authors_input(img: np.ndarray, size: int = SIZE) -> torch.Tensor:
    """The authors' ``TestDataset`` transform on a PIL image (``dataset.py``), without Normalize
    (ImageNet normalisation runs inside the exported graphs)."""
    from PIL import Image
    from torchvision import transforms

    tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor()])
    return tf(Image.fromarray(img).convert("RGB"))[None]


@torch.no_grad()
def _torch_probability(name: str, img: np.ndarray, x: torch.Tensor) -> np.ndarray:
    """PyTorch model (authors' forward) on ``x`` + the authors' test.py post-processing."""
    from export.dense.blocks import Normalize

    model = torch_model(name)
    out = model(Normalize()(x))
    logits = out[0] if isinstance(out, tuple) else out  # SAM2-UNet returns (out, out1, out2)
    prob = torch.sigmoid(F.interpolate(logits, size=img.shape[:2], mode="bilinear", align_corners=False))
    return prob[0, 0].numpy()


def _authors_png(prob: np.ndarray) -> np.ndarray:
    """test.py's saved map, as written there (float32 numpy from the sigmoid)."""
    res = prob.squeeze()
    res = (res - res.min()) / (res.max() - res.min() + 1e-8)
    return (res * 255).astype(np.uint8)


@pytest.mark.parametrize("name", ["unet", "unext-split-fp16"])
def test_probability_map_matches_the_authors_pipeline(name):
    """Natural-like JPEG images through the runtime vs the authors' dataset.py + model + test.py."""
    from runtime.dense.segmenter import DenseSegmenter, prob_to_png

    ious, same = [], []
    with DenseSegmenter.load(built(name), backend="onnxruntime") as seg:
        for img in natural_images():
            prob = seg.predict(img)
            assert set(seg.timings) >= {"preprocess", "postprocess", "total", *seg.specs}
            ref = _torch_probability(name, img, _authors_input(img))
            assert prob.shape == img.shape[:2] and prob.dtype == np.float32
            a, b = prob > 0.5, ref > 0.5
            ious.append((a & b).sum() / max((a | b).sum(), 1))
            same.append(float((prob_to_png(prob) == _authors_png(ref)).mean()))
            assert 0.02 < b.mean() < 0.98  # the maps are not trivially one class
    print(f"{name}: {len(ious)} images, mask IoU vs the authors' pipeline min {min(ious):.5f}, "
          f"8-bit map identical on min {min(same):.4%} of pixels")
    assert min(ious) >= 0.999 and min(same) >= 0.999


def test_preprocessing_is_the_authors_pil_resize():
    """prepare_image gives exactly the tensor torchvision's Resize + ToTensor give on a PIL image."""
    from runtime.dense.segmenter import prepare_image

    for img in natural_images() + [_image()]:
        x, hw = prepare_image(img, SIZE)
        assert hw == img.shape[:2] and x.shape == (1, 3, SIZE, SIZE)
        assert np.array_equal(x, _authors_input(img).numpy())


def test_preprocess_graph_is_the_authors_pil_resize():
    """The folder's preprocess graph (ONNX Runtime) gives exactly torchvision's Resize + ToTensor on
    a PIL image, so the maps on the backend path are the host path's, bit for bit; the feature
    engines (float resize) have no edge graph."""
    from runtime.core.edges import pil_preprocess_feeds
    from runtime.core.folder import ModelFolder
    from runtime.dense.segmenter import DenseSegmenter

    images = natural_images() + [_image()]
    with DenseSegmenter.load(built("unet"), backend="onnxruntime", preprocess="backend") as seg, \
            DenseSegmenter.load(built("unet"), backend="onnxruntime", preprocess="host") as host:
        graph = seg.session.runners["preprocess"]
        assert "preprocess" not in host.session.runners
        for img in images:
            x = graph.infer(pil_preprocess_feeds(img, SIZE, "bilinear"))["image"]
            np.testing.assert_array_equal(x, _authors_input(img).numpy())
            np.testing.assert_array_equal(seg.predict(img), host.predict(img))
        assert seg.stage_calls["preprocess"] == 2 * len(images)  # ours above, and predict()
    record = ModelFolder.open(built("unet")).stage("preprocess")
    assert record.parity["passed"] and record.parity["rel_l2"] == 0.0
    assert ModelFolder.open(built("features-fpn")).manifest.edge_specs == {}


def test_saved_map_is_the_authors():
    from runtime.dense.segmenter import prob_to_png

    rng = np.random.default_rng(0)
    prob = (1 / (1 + np.exp(-rng.normal(0, 4, (60, 70))))).astype(np.float32)
    png = prob_to_png(prob)
    assert np.array_equal(png, _authors_png(prob)) and png.max() == 255 and png.min() == 0


def test_features_match_pytorch():
    from runtime.dense.features import FeatureExtractor

    img = _image(70, 40, seed=1)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False, antialias=True)
    enc = torch_model("features-fpn").image_encoder
    with torch.no_grad():
        from export.dense.blocks import Normalize

        out = enc(Normalize()(x))
        trunk = enc.trunk(Normalize()(x))
    ref = dict(zip(["trunk_s4", "trunk_s8", "trunk_s16", "trunk_s32"], trunk))
    ref.update(zip(["fpn_s4", "fpn_s8", "fpn_s16"], out["backbone_fpn"]))
    with FeatureExtractor.load(built("features-fpn"), backend="onnxruntime") as fx:
        feats = fx.extract(img)
        assert fx.shapes()["fpn_s8"] == (256, SIZE // 8, SIZE // 8)
    assert list(feats) == list(ref)
    for k, v in ref.items():
        v = v[0].numpy()
        assert feats[k].shape == v.shape
        assert np.linalg.norm(feats[k] - v) / np.linalg.norm(v) < 1e-5, k


def test_each_loader_refuses_the_other_kinds_folder():
    from runtime import FewShotSegmenter
    from runtime.dense.segmenter import DenseSegmenter
    from runtime.dense.features import FeatureExtractor
    from runtime.errors import ModelFolderError

    with pytest.raises(ModelFolderError, match="which DenseSegmenter cannot run.*open this one with FeatureExtractor"):
        DenseSegmenter.load(built("features-fpn"))
    with pytest.raises(ModelFolderError, match="which FeatureExtractor cannot run.*open this one with DenseSegmenter"):
        FeatureExtractor.load(built("unet"))
    with pytest.raises(ModelFolderError, match="which FewShotSegmenter cannot run.*open this one with DenseSegmenter"):
        FewShotSegmenter.load(built("unet"))


def test_changed_files_and_failed_builds_are_refused(tmp_path):
    import shutil

    from runtime.dense.segmenter import DenseSegmenter
    from runtime.errors import ModelFolderError

    d = tmp_path / "unet"
    shutil.copytree(built("unet"), d)
    with open(d / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelFolderError, match="does not match the sha256"):
        DenseSegmenter.load(d)
    m = json.loads((d / "manifest.json").read_text())
    m["status"] = "failed"
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelFolderError, match="status='failed'"):
        DenseSegmenter.load(d)
    with pytest.raises(ModelFolderError, match="does not exist"):
        DenseSegmenter.load(tmp_path / "nothing")


def test_bad_images_are_refused_with_a_message():
    from runtime.dense.segmenter import DenseSegmenter
    from runtime.errors import InputError

    with DenseSegmenter.load(built("unet"), backend="onnxruntime") as seg:
        with pytest.raises(InputError, match="channels"):
            seg.predict(np.zeros((10, 10, 5), np.uint8))
        with pytest.raises(InputError, match=r"\[0, 1\]"):
            seg.predict(np.full((10, 10, 3), 2.0, np.float32))
        gray = seg.predict(_image()[:, :, 0])  # grayscale is replicated to RGB
        assert gray.shape == (50, 83)


def test_runtime_imports_no_torch():
    code = ("import sys, runtime, runtime.dense.segmenter, runtime.dense.features, runtime.cli.dense, runtime.dense.spec; "
            "bad = [m for m in ('torch', 'export', 'calib', 'sam2') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_segment_cli_dense(tmp_path, capsys):
    from runtime.core.imageio import write_image
    from runtime.cli.dense import main

    write_image(tmp_path / "a.png", _image())
    rc = main(["--model-dir", str(built("unet")), "--target", str(tmp_path / "a.png"),
               "--out", str(tmp_path / "out"), "--backend", "onnxruntime"])
    assert rc == 0
    assert "sam2-unet at 64px" in capsys.readouterr().out
    import cv2

    prob = cv2.imread(str(tmp_path / "out" / "a_prob.png"), cv2.IMREAD_GRAYSCALE)
    assert prob.shape == (50, 83) and prob.max() >= 254 and prob.min() == 0  # min-max normalised (floored, as the authors)
    assert (tmp_path / "out" / "a_mask.png").is_file() and (tmp_path / "out" / "a_overlay.png").is_file()
    rc = main(["--model-dir", str(built("features-fpn")), "--target", str(tmp_path / "a.png"),
               "--out", str(tmp_path / "out2")])
    assert rc == 2 and "FeatureExtractor" in capsys.readouterr().err


def test_io_binding_chains_dense_parts_on_ortvalues_with_the_same_results():
    """ONNX Runtime's IOBinding path (forced on the CPU provider: host OrtValues) through a split
    build's chained parts, the preprocess graph and the feature engine: the same maps and features."""
    from runtime.core.session import EngineSession
    from runtime.dense.features import FeatureExtractor
    from runtime.dense.segmenter import DenseSegmenter

    img = _image(90, 120, seed=3)
    out = {}
    for bind in (False, True):
        with EngineSession.open(built("unext-split-fp16"), backend="onnxruntime", io_binding=bind,
                                preprocess="backend") as session:
            assert len(session.runners) == 4  # sam_encoder, dino_encoder, decoder + the preprocess graph
            out[bind, "prob"] = DenseSegmenter(session).predict(img)
        with EngineSession.open(built("features-fpn"), backend="onnxruntime", io_binding=bind) as session:
            out[bind, "feats"] = FeatureExtractor(session).extract(img)
    np.testing.assert_array_equal(out[True, "prob"], out[False, "prob"])
    for k, v in out[False, "feats"].items():
        np.testing.assert_array_equal(out[True, "feats"][k], v)
