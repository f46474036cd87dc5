"""``python -m runtime camera``: references, bad inputs, a headless run and SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from runtime.cli.camera import build_parser, main  # noqa: E402
from runtime.cli.references import collect, load_reference_folder  # noqa: E402
from runtime.errors import EXIT_SOURCE, EXIT_USAGE as EXIT_INPUT, InputError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
W, H = 160, 120


def make_pair(d: Path, name: str, mask_hw=(H, W), ext=".png"):
    d.mkdir(parents=True, exist_ok=True)
    img = np.full((H, W, 3), 90, np.uint8)
    img[35:85, 30:80] = (40, 40, 220)  # BGR red
    cv2.imwrite(str(d / f"{name}{ext}"), img)
    m = np.zeros(mask_hw, np.uint8)
    m[mask_hw[0] // 4: mask_hw[0] // 2, mask_hw[1] // 4: mask_hw[1] // 2] = 255
    cv2.imwrite(str(d / f"{name}_mask.png"), m)


def write_video(path: Path, n: int) -> Path:
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (W, H))
    for i in range(n):
        f = np.full((H, W, 3), 90, np.uint8)
        f[35:85, 30 + 3 * i: 80 + 3 * i] = (40, 40, 220)
        wr.write(f)
    wr.release()
    return path


def count_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


# ------------------------------------------------------------------ references
def test_reference_folder_loads_rgb(tmp_path):
    make_pair(tmp_path / "refs" / "square", "a")
    make_pair(tmp_path / "refs" / "square", "b", ext=".jpg")
    make_pair(tmp_path / "refs" / "other", "x")
    refs = load_reference_folder(tmp_path / "refs")
    assert [(r.concept, r.sources[0].name) for r in refs] == [("other", "x.png"), ("square", "a.png"),
                                                             ("square", "b.jpg")]
    r = refs[0]
    m = r.prompt["mask"]
    assert r.image.shape == (H, W, 3) and m.dtype == bool and m.shape == (H, W)
    assert tuple(r.image[50, 50]) == (220, 40, 40)  # converted BGR -> RGB


@pytest.mark.parametrize("setup, match", [
    (lambda d: d.mkdir(), "is empty"),
    (lambda d: (d / "cat").mkdir(parents=True), "has no images"),
    (lambda d: (make_pair(d / "cat", "a"), (d / "cat" / "a_mask.png").unlink()), r"a\.png has no mask"),
    (lambda d: (make_pair(d / "cat", "a"), (d / "cat" / "a.png").unlink()), r"a_mask\.png has no image"),
    (lambda d: make_pair(d / "cat", "a", mask_hw=(60, 80)), r"a_mask\.png is 80x60 .*/a\.png is 160x120"),
])
def test_bad_reference_folders_name_the_file(tmp_path, setup, match):
    setup(tmp_path / "refs")
    with pytest.raises(InputError, match=match):
        load_reference_folder(tmp_path / "refs")


def test_ref_arguments(tmp_path):
    make_pair(tmp_path, "a")
    img, mask = tmp_path / "a.png", tmp_path / "a_mask.png"

    def refs(*argv):
        return collect(build_parser().parse_args(["--model-dir", "x", "--source", "0", *argv]))

    r = refs("--ref", f"sq={img}:{mask}", "--ref-box", f"{img}:10,10,60,50", "--ref-points", f"pt={img}:5,6;7,8")
    assert [(x.concept, sorted(x.prompt)) for x in r] == [("sq", ["mask"]), ("default", ["box"]), ("pt", ["points"])]
    assert r[1].prompt["box"] == [10, 10, 60, 50] and r[2].prompt["points"] == [[5, 6], [7, 8]]
    with pytest.raises(InputError, match=r"\[CONCEPT=\]IMAGE:MASK"):
        refs("--ref", "sq=only-one")
    with pytest.raises(InputError, match="four numbers"):
        refs("--ref-box", f"{img}:1,2,3")
    with pytest.raises(InputError, match="no references"):
        refs()


# ------------------------------------------------------------------ bad inputs
def run_main(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_unknown_source(tiny_engines, tmp_path, capsys):
    make_pair(tmp_path / "refs" / "sq", "a")
    rc, _, err = run_main(capsys, "--model-dir", tiny_engines, "--refs", tmp_path / "refs",
                          "--source", tmp_path / "missing.mp4")
    assert rc == EXIT_SOURCE and "error: unknown source" in err


def test_unopenable_camera_index(tiny_engines, tmp_path, capsys):
    make_pair(tmp_path / "refs" / "sq", "a")
    t = time.monotonic()
    rc, _, err = run_main(capsys, "--model-dir", tiny_engines, "--refs", tmp_path / "refs",
                          "--source", "97", "--open-timeout", "3")
    assert rc == EXIT_SOURCE and "cannot open source 'camera 97'" in err
    assert time.monotonic() - t < 5


def test_empty_refs_folder(tiny_engines, tmp_path, capsys):
    (tmp_path / "refs").mkdir()
    rc, _, err = run_main(capsys, "--model-dir", tiny_engines, "--refs", tmp_path / "refs", "--source", "0")
    assert rc == EXIT_INPUT and "is empty" in err


def test_mismatched_mask(tiny_engines, tmp_path, capsys):
    make_pair(tmp_path / "refs" / "sq", "a", mask_hw=(50, 50))
    rc, _, err = run_main(capsys, "--model-dir", tiny_engines, "--refs", tmp_path / "refs", "--source", "0")
    assert rc == EXIT_INPUT and "a_mask.png is 50x50" in err


def test_missing_engines_and_bad_args(tmp_path, capsys):
    rc, _, err = run_main(capsys, "--model-dir", tmp_path / "none", "--ref", "a=b:c", "--source", "0")
    assert rc == EXIT_INPUT and "model folder" in err and "does not exist" in err
    with pytest.raises(SystemExit) as e:
        main(["--model-dir", str(tmp_path), "--source", "0", "--backend", "cuda"])
    assert e.value.code == 2


# ---------------------------------------------------------------- headless run
@pytest.mark.parametrize("extra", [[], ["--objects-per-call", "2", "--pad-objects"]])
def test_headless_video_run(tiny_engines, tmp_path, capsys, extra):
    n = 4
    make_pair(tmp_path / "refs" / "square", "a")
    video = write_video(tmp_path / "in.mp4", n)
    rc, out, err = run_main(capsys, "--model-dir", tiny_engines, "--refs", tmp_path / "refs",
                            "--source", video, "--output", tmp_path / "out.mp4", "--backend", "onnxruntime",
                            *extra)
    print(out)
    assert rc == 0, err
    assert f"frames in {n}, out {n}, dropped 0, reconnects 0" in out
    for stage in ("capture", "preprocess", "image_encoder", "memory_attention", "mask_decoder",
                  "postprocess", "draw", "write"):
        assert f"\n  {stage} " in out
    assert count_frames(tmp_path / "out.mp4") == n
    assert not list(tmp_path.glob(".out.partial*"))


def test_sigterm_stops_cleanly(tiny_engines, tmp_path):
    make_pair(tmp_path / "refs" / "square", "a")
    video = write_video(tmp_path / "in.mp4", 60)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen(
        [sys.executable, "-m", "runtime", "camera", "--model-dir", str(tiny_engines), "--refs", str(tmp_path / "refs"),
         "--source", str(video), "--output", str(tmp_path / "out.mp4"), "--threads", "1"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 40
        while not (tmp_path / ".out.partial.mp4").exists():  # first frame written: the loop runs
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()
            time.sleep(0.05)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 143, err  # the output finalised, then the documented SIGTERM status
    assert "SIGTERM: stopping" in err and "interrupted" in out and "error: interrupted (SIGTERM)" in err
    frames_out = int(out.split(" out ")[1].split(",")[0])
    assert 1 <= frames_out < 60
    assert count_frames(tmp_path / "out.mp4") == frames_out
