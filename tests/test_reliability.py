"""Reliability as users meet it: faults of folders, checkpoints, flags and inputs, interrupts, threads, limits.

Every case asserts the error type (or exit code), a fragment of the message
that names the problem, and that a good input works afterwards. Folder copies
are hard links of the session's 256 px build (a case replaces the files it
breaks, never writes through a link).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from runtime.core.folder import ModelFolder
from runtime.errors import InputError, ModelFolderError, ProfileLimitError, UsageError
from runtime.sam2.fewshot import FewShotSegmenter
from tests.real_packages import ROOT

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 256, (200, 240, 3), dtype=np.uint8)
MASK = np.zeros((200, 240), bool)
MASK[50:120, 60:150] = True


def linked_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


def replace(path: Path, data: bytes) -> None:
    """New contents under ``path`` without touching the (linked) old inode."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def edit_manifest(folder: Path, fn) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    replace(folder / "manifest.json", json.dumps(fn(m)).encode())


def works(folder) -> None:
    with FewShotSegmenter.load(folder, backend="onnxruntime") as seg:
        seg.add_reference(IMAGE, MASK)
        assert seg.segment(IMAGE)["default"].mask.shape == IMAGE.shape[:2]


# ------------------------------------------------------------------ folder faults
FOLDER_FAULTS = {
    "manifest missing": (lambda f: (f / "manifest.json").unlink(), "manifest.json' is missing"),
    "manifest a list": (lambda f: replace(f / "manifest.json", b"[]"), "holds a list, not a manifest"),
    "manifest not JSON": (lambda f: replace(f / "manifest.json", b"{"), "is not valid JSON"),
    "image_size edited": (lambda f: edit_manifest(f, lambda m: {**m, "model": {**m["model"], "image_size": 512}}),
                          "image_size 512 but stage 'image_encoder' takes (256, 256)"),
    "file name escapes": (lambda f: edit_manifest(f, lambda m: (m["stages"]["mask_decoder"]["files"]["fp32"].update(
        file="../mask_decoder.onnx"), m)[1]), "not a plain file name"),
    "stage file missing": (lambda f: (f / "memory_encoder.onnx").unlink(), "memory_encoder.onnx' is missing"),
    "stage file replaced": (lambda f: replace(f / "mask_decoder.onnx", b"x" * 100), "does not match the sha256"),
    "constants missing": (lambda f: (f / "constants.npz").unlink(), "constants.npz' is missing"),
    "constants truncated": (lambda f: replace(f / "constants.npz", (f / "constants.npz").read_bytes()[:50]),
                            "does not match the sha256"),
    "build interrupted": (lambda f: edit_manifest(f, lambda m: {**m, "status": "building"}), "status='building'"),
}


@pytest.mark.parametrize("case", list(FOLDER_FAULTS))
def test_folder_faults_are_named(tiny_engines, tmp_path, case):
    folder = linked_copy(tiny_engines, tmp_path / "f")
    breaks, message = FOLDER_FAULTS[case]
    breaks(folder)
    with pytest.raises(ModelFolderError, match=re.escape(message)):
        FewShotSegmenter.load(folder, backend="onnxruntime")
    r = subprocess.run([sys.executable, "-m", "runtime", "segment", "--model-dir", str(folder), "--ref",
                        f"{tmp_path / 'i.png'}:{tmp_path / 'm.png'}", "--target", str(tmp_path / "i.png"),
                        "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONWARNINGS="ignore")) if case == "stage file replaced" else None
    if r is not None:  # the CLI: one line, exit 2, no traceback (the image files do not even need to exist)
        assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.startswith("error:")
    works(tiny_engines)


def test_a_product_given_another_kind_of_folder(tiny_engines):
    from runtime.sam2.predictor import ImagePredictor
    from runtime.sam2.tracker import VideoTracker

    for cls in (ImagePredictor, VideoTracker):
        with pytest.raises(ModelFolderError, match="holds a 'sam2-fewshot' model.*cannot run"):
            cls.load(tiny_engines, backend="onnxruntime")
    works(tiny_engines)


# -------------------------------------------------- loading is atomic against a re-export
def test_a_file_swapped_between_hashing_and_loading_is_not_used(tiny_engines, plain_engines, tmp_path,
                                                                monkeypatch):
    """What is hashed is what runs: replacing a stage file right after it was read changes nothing."""
    folder = linked_copy(tiny_engines, tmp_path / "f")
    original = ModelFolder.read_verified

    def read_then_swap(self, rec):
        data = original(self, rec)
        if rec.file == "memory_encoder.onnx":  # another build's file, same name, right after the hash
            replace(self.path / rec.file, (plain_engines / rec.file).read_bytes())
        return data

    monkeypatch.setattr(ModelFolder, "read_verified", read_then_swap)
    with FewShotSegmenter.load(folder, backend="onnxruntime") as seg:
        seg.add_reference(IMAGE, MASK)
        swapped = seg.segment(IMAGE)["default"].logits
    monkeypatch.setattr(ModelFolder, "read_verified", original)
    with FewShotSegmenter.load(tiny_engines, backend="onnxruntime") as seg:
        seg.add_reference(IMAGE, MASK)
        np.testing.assert_array_equal(swapped, seg.segment(IMAGE)["default"].logits)
    with pytest.raises(ModelFolderError, match="does not match the sha256"):  # and the next load refuses the mix
        FewShotSegmenter.load(folder, backend="onnxruntime")


def test_a_killed_force_rebuild_never_looks_complete(tiny_engines, tmp_path):
    """export.build --force killed after it replaced a file: the folder says 'building', readers refuse it,
    and the next run removes the partial files it left."""
    folder = linked_copy(tiny_engines, tmp_path / "f")
    before = (folder / "image_encoder.onnx").stat().st_ino
    cmd = [sys.executable, "-m", "export.build", "--precision", "fp32", "--model", "tiny", "--image-size", "256",
           "--random-weights", "--skip-tensorrt", "--force", "--out", str(folder)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until the first stage file was replaced, then kill
        if (folder / "image_encoder.onnx").stat().st_ino != before:
            break
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    assert json.loads((folder / "manifest.json").read_text())["status"] == "building"
    with pytest.raises(ModelFolderError, match="status='building'"):
        FewShotSegmenter.load(folder, backend="onnxruntime")
    (folder / ".mask_decoder.onnx.abc.part").write_bytes(b"left by a SIGKILL")
    from export.options import prepare_out

    logs = []
    prepare_out(folder, "x", False, logs.append)
    assert not list(folder.glob(".*.part")) and any("partial file" in m for m in logs)


def test_folder_files_have_the_umask_mode(tiny_engines):
    """A folder built by one user is readable by another (mkstemp's 0600 is not kept)."""
    from runtime.core.fileio import FILE_MODE

    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tiny_engines.iterdir() if p.is_file()}
    assert modes and set(modes.values()) == {FILE_MODE}
    assert FILE_MODE & 0o044 or (FILE_MODE == 0o600)  # group/other read unless the umask forbids it


# ------------------------------------------------------------------ build faults
@pytest.mark.parametrize("args,message", [
    (["--sam2-checkpoint", "EMPTY"], "is empty"),
    (["--sam2-checkpoint", "/nonexistent/sam2.pt"], "does not exist"),
    (["--out", "FILE"], "is not a folder"),
    (["--max-prompt-frames", "3"], "--max-prompt-frames is for --stock-sam2"),
    (["--stock-sam2", "--no-adapters", "--max-prompt-frames", "0"], "must be >= 1"),
])
def test_build_faults_are_usage_errors(tmp_path, capsys, args, message):
    from export.build import main

    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "file").write_text("x")
    args = [str(tmp_path / "empty.pt") if a == "EMPTY" else str(tmp_path / "file") if a == "FILE" else a
            for a in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "out")]
    rc = main(["--precision", "fp32", "--model", "tiny", "--image-size", "256", "--skip-tensorrt",
               *(["--random-weights"] if "--sam2-checkpoint" not in args else []), *out, *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere: a read-only --out cannot be made here")
def test_read_only_out_is_a_usage_error(tmp_path, capsys):
    from export.build import main

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["--model", "tiny", "--random-weights", "--skip-tensorrt", "--out", str(ro / "x")]) == 2
        assert "cannot be created" in capsys.readouterr().err
    finally:
        ro.chmod(0o755)


# ------------------------------------------------------------------ NaN and inf
def _nan_image():
    x = IMAGE.astype(np.float32) / 255
    x[3, 4, 1] = np.nan
    return x


@pytest.fixture(scope="module")
def seg(tiny_engines):
    with FewShotSegmenter.load(tiny_engines, backend="onnxruntime") as s:
        yield s


@pytest.mark.parametrize("call,message", [
    (lambda s: s.add_reference(_nan_image(), MASK), "NaN or infinite"),
    (lambda s: s.add_reference(IMAGE, points=[[np.nan, 3.0]]), "point coordinates must be finite"),
    (lambda s: s.add_reference(IMAGE, box=[1, 2, np.inf, 40]), "box coordinates must be finite"),
    (lambda s: s.add_reference(IMAGE, np.where(MASK, np.nan, 0.0)), "mask holds NaN"),
    (lambda s: (s.add_reference(IMAGE, MASK), s.segment(_nan_image())), "NaN or infinite"),
])
def test_nan_and_inf_are_refused_by_the_few_shot_segmenter(seg, call, message):
    seg.clear()
    with pytest.raises(InputError, match=message):
        call(seg)
    seg.clear()
    seg.add_reference(IMAGE, MASK)
    assert seg.segment(IMAGE)["default"].mask.any()


@pytest.fixture(scope="module")
def stock(stock_sam2_factory):
    return stock_sam2_factory("2.1")[2]


def test_nan_and_inf_are_refused_by_the_predictor_and_tracker(stock):
    from runtime.sam2.predictor import ImagePredictor
    from runtime.sam2.tracker import VideoTracker

    with ImagePredictor.load(stock, backend="onnxruntime") as p:
        with pytest.raises(InputError, match="NaN or infinite"):
            p.set_image(_nan_image())
        p.set_image(IMAGE)
        with pytest.raises(InputError, match="point coordinates must be finite"):
            p.predict(points=[[np.nan, 1]], labels=[1])
        with pytest.raises(InputError, match="mask_input holds NaN"):
            p.predict(points=[[5, 5]], labels=[1], mask_input=np.full((64, 64), np.nan, np.float32))
        masks, scores, _ = p.predict(points=[[100, 80]], labels=[1])
        assert np.isfinite(scores).all()
    with VideoTracker.load(stock, backend="onnxruntime") as t:
        with pytest.raises(InputError, match="point coordinates must be finite"):
            t.add_prompt(0, 1, IMAGE, points=[[np.nan, 2]], labels=[1])
        with pytest.raises(InputError, match="NaN or infinite"):
            t.add_prompt(0, 1, _nan_image(), points=[[5, 5]], labels=[1])
        t.add_prompt(0, 1, IMAGE, points=[[100, 80]], labels=[1])
        with pytest.raises(InputError, match="NaN or infinite"):
            t.track_frame(1, _nan_image())
        assert np.isfinite(t.track_frame(1, IMAGE)[1].object_score)


def test_track_frame_takes_uint8_and_float_frames_alike(stock):
    """Both kinds of frame are tracked; at the model size (no resize) they give the same masks
    (elsewhere uint8 frames take sam2's video loader's resize, float ones the image predictor's)."""
    from runtime.sam2.tracker import VideoTracker

    out = {}
    size = ModelFolder.open(stock).manifest.image_size
    image = RNG.integers(0, 256, (size, size, 3), dtype=np.uint8)
    for kind, frame in (("uint8", image), ("float", image.astype(np.float32) / 255)):
        with VideoTracker.load(stock, backend="onnxruntime") as t:
            t.add_prompt(0, 1, image, points=[[100, 80]], labels=[1])
            out[kind] = t.track_frame(1, frame)[1].logits
    np.testing.assert_allclose(out["uint8"], out["float"], atol=1e-5)


# ------------------------------------------------------------------ profile limits
def test_prompted_frames_beyond_the_engines_fail_at_the_prompt(stock):
    from runtime.sam2.tracker import VideoTracker

    with VideoTracker.load(stock, backend="onnxruntime") as t:
        limit = t.prompt_frame_limit()
        assert limit == 8  # export.build --max-prompt-frames default
        for f in range(limit):
            t.add_prompt(f, 1, IMAGE, points=[[100, 80]], labels=[1])
        with pytest.raises(ProfileLimitError, match=f"take at most {limit} prompted frames.*--max-prompt-frames 9"):
            t.add_prompt(limit, 1, IMAGE, points=[[100, 80]], labels=[1])
        t.add_prompt(0, 1, IMAGE, points=[[110, 90]], labels=[1])  # refining a prompted frame is fine
        t.add_prompt(0, 2, IMAGE, box=[20, 20, 120, 120])  # and another object has its own budget
        assert len(list(t.propagate([IMAGE] * (limit + 2)))) == limit + 2


def test_too_many_prompt_points_fail_at_the_prompt(seg):
    seg.clear()
    with pytest.raises(ProfileLimitError, match="65 prompt points, but this model folder takes at most 64"):
        seg.add_reference(IMAGE, points=[[5 + i, 5] for i in range(65)])
    seg.add_reference(IMAGE, MASK)
    assert seg.segment(IMAGE)["default"].mask.any()


# ------------------------------------------------------------------ threads
def test_segment_beside_reference_changes_in_other_threads(seg):
    """segment() while other threads add, clear and replace references: no error, no torn state."""
    seg.clear()
    seg.add_reference(IMAGE, MASK, concept="a")
    errors, stop = [], threading.Event()

    def edit():
        try:
            i = 0
            while not stop.is_set():
                with seg.updating():  # clear + add as one step: segment never sees no reference
                    seg.clear()
                    seg.add_reference(IMAGE, MASK, concept="a")
                seg.add_reference(IMAGE, MASK, concept=f"c{i % 3}")
                i += 1
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    th = threading.Thread(target=edit)
    th.start()
    try:
        for _ in range(6):
            res = seg.segment(IMAGE)
            assert "a" in res.concepts
    finally:
        stop.set()
        th.join()
    assert errors == []


# ------------------------------------------------------------------ interrupts
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_segment_cli_interrupted_exits_cleanly(tiny_engines, tmp_path, sig, code):
    import cv2

    cv2.imwrite(str(tmp_path / "i.png"), IMAGE[:, :, ::-1])
    cv2.imwrite(str(tmp_path / "m.png"), MASK.astype(np.uint8) * 255)
    targets = [a for _ in range(200) for a in ("--target", str(tmp_path / "i.png"))]
    proc = subprocess.Popen([sys.executable, "-u", "-m", "runtime", "segment", "--model-dir", str(tiny_engines),
                             "--ref", f"{tmp_path / 'i.png'}:{tmp_path / 'm.png'}", *targets, "--out",
                             str(tmp_path / "out")], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    line = ""
    while "ms)" not in line:  # the first target is done: the loop is running
        line = proc.stdout.readline()
        assert line or proc.poll() is None, proc.stderr.read()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code and "Traceback" not in err
    word = "interrupted" if sig == signal.SIGINT else "terminated"
    assert err.strip().splitlines()[-1] == f"error: {word} ({sig.name})"
    assert (tmp_path / "out" / "i_overlay.png").is_file()  # what was finished is there


def test_segment_cli_names_repeated_targets_apart(tiny_engines, tmp_path, capsys):
    import cv2

    from runtime.cli.segment import main

    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        cv2.imwrite(str(tmp_path / d / "x.png"), IMAGE[:, :, ::-1])
    cv2.imwrite(str(tmp_path / "m.png"), MASK.astype(np.uint8) * 255)
    assert main(["--model-dir", str(tiny_engines), "--ref", f"{tmp_path / 'a' / 'x.png'}:{tmp_path / 'm.png'}",
                 "--target", str(tmp_path / "a" / "x.png"), "--target", str(tmp_path / "b" / "x.png"),
                 "--out", str(tmp_path / "out"), "--backend", "onnxruntime"]) == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["x-2_default_mask.png", "x-2_overlay.png", "x_default_mask.png", "x_overlay.png"]
    from runtime.cli.segment import _segment, safe

    assert safe("../etc/x y") == "_etc_x_y" and safe("..") == "_"
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="is a file"):
        _segment(type("A", (), {"out": tmp_path / "file"})())
