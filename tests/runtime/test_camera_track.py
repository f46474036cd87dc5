"""``python -m runtime camera --track``: SAM2 tracking on the camera loop (stock engines, 256 px)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from runtime.cli.camera import main  # noqa: E402
from runtime.camera.loop import CameraLoop, LoopOptions  # noqa: E402
from runtime.camera.overlay import concept_colours, draw_masks  # noqa: E402
from runtime.camera.prompts import parse_prompts  # noqa: E402
from runtime.camera.sources import FrameSource, make_source  # noqa: E402
from runtime.camera.steps import TrackingStep  # noqa: E402
from runtime.errors import EXIT_USAGE as EXIT_INPUT, InputError  # noqa: E402
from runtime.errors import InputError as PromptError  # noqa: E402  (prompt faults are input errors)
from runtime.sam2.tracker import ObjectMask, TrackedFrame, VideoTracker  # noqa: E402

W, H = 160, 120
BOX = "30,35,80,85"  # the red square on frame 0


def scene(i: int) -> np.ndarray:
    """BGR frame: grey background with a red square drifting right."""
    f = np.full((H, W, 3), 90, np.uint8)
    f[35:85, 30 + 3 * i: 80 + 3 * i] = (40, 40, 220)
    return f


def write_video(path: Path, n: int) -> Path:
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (W, H))
    for i in range(n):
        wr.write(scene(i))
    wr.release()
    return path


def read_all(path: Path):
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return frames


@pytest.fixture(scope="module")
def stock_engines(stock_sam2_factory) -> Path:
    """Stock SAM2.1 hiera-tiny (object-score head, no adapters), 256 px, ONNX only."""
    return stock_sam2_factory("2.1")[2]


def offline_masks(engines: Path, frames_bgr, objects):
    """What VideoTracker.propagate gives on the same decoded frames as a stream of unknown
    length (as the camera loop tracks): ``[{name: mask}]`` per frame."""
    rgb = [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in frames_bgr]
    with VideoTracker.load(engines, backend="onnxruntime") as trk:
        for o in objects:
            trk.add_prompt(0, o.name, rgb[0], **o.tracker_kwargs())
        return [{o.name: out[o.name].mask for o in objects} for out in trk.propagate(iter(rgb))]


def run_main(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------------- prompts
def test_prompts_group_into_objects_in_command_line_order():
    objs = parse_prompts([("point", "5,6"), ("box", "1,2,30,40"), ("neg-point", "10,12"),
                          ("box", "obj3=50,50,70,70"), ("box", "60,10,90,30"), ("point", "obj3=55,55"),
                          ("point", "cup=3.5,4")])
    assert [o.name for o in objs] == ["obj1", "obj2", "obj3", "obj4", "cup"]
    first, box, named, second_box, cup = objs
    assert first.points == [(5.0, 6.0)] and first.labels == [1] and first.box is None
    assert box.box == (1, 2, 30, 40) and box.points == [(10, 12)] and box.labels == [0]  # refines its box
    assert named.box == (50, 50, 70, 70) and named.labels == [1]
    assert second_box.box == (60, 10, 90, 30) and not second_box.points  # 'obj3' taken: next free name
    assert cup.points == [(3.5, 4.0)]
    assert box.tracker_kwargs() == {"box": (1, 2, 30, 40), "points": [[10.0, 12.0]], "labels": [0]}


def test_prompt_outside_frame_is_named():
    (obj,) = parse_prompts([("box", "10,10,170,50")])
    obj.check_frame((120, 200))
    with pytest.raises(PromptError, match=r"--box 10,10,170,50\): \(170, 50\) is outside the first frame, "
                                          r"which is 160x120"):
        obj.check_frame((H, W))


# ---------------------------------------------------- bad arguments (no engines)
@pytest.fixture
def fake_engines(tmp_path):
    """A folder whose manifest says stock SAM2 (enough for the checks made before loading)."""
    from conftest import folder_with
    from runtime.core.folder import ModelFolder

    d = tmp_path / "engines"
    d.mkdir()
    f = folder_with({}, kind="sam2")
    f.manifest.status = "complete"
    ModelFolder(d, f.manifest).write()
    return d


@pytest.mark.parametrize("args, message", [
    (["--track"], "tracking needs a prompt on the first frame"),
    (["--track", "--neg-point", "3,3"], "object obj1 has only background clicks"),
    (["--track", "--box", "1,1,5"], "--box 1,1,5: expected X0,Y0,X1,Y1"),
    (["--track", "--box", "5,5,1,1"], "the box needs X1 > X0 and Y1 > Y0"),
    (["--track", "--point", "a,b"], "--point a,b: expected X,Y"),
    (["--track", "--box", "a=1,1,5,5", "--box", "a=2,2,6,6"], "object a has two boxes"),
    (["--track", "--track-mask", "missing.png"], "--track-mask missing.png: mask 'missing.png' does not exist"),
    (["--track", "--point", "1,1", "--ref", "a=b:c"], "--ref.../--refs are for few-shot mode"),
    (["--box", "1,1,5,5"], "are tracking prompts: add --track"),
    ([], "no references: give --ref [CONCEPT=]IMAGE:MASK (or --ref-scribble, --ref-box, --ref-points, "
         "--refs FOLDER) for few-shot, or --track"),
])
def test_bad_tracking_arguments(fake_engines, tmp_path, capsys, args, message):
    rc, _, err = run_main(capsys, "--model-dir", fake_engines, "--source", tmp_path / "none.mp4", *args)
    assert rc == EXIT_INPUT and message in err, err


def test_fewshot_engines_refused_for_tracking(fake_engines, tmp_path, capsys):
    m = json.loads((fake_engines / "manifest.json").read_text())
    m["kind"] = "sam2-fewshot"
    (fake_engines / "manifest.json").write_text(json.dumps(m))
    rc, _, err = run_main(capsys, "--model-dir", fake_engines, "--source", tmp_path / "none.mp4",
                          "--track", "--box", BOX)
    assert rc == EXIT_INPUT
    assert "which VideoTracker cannot run: it runs 'sam2' folders" in err and "'sam2-fewshot'" in err
    assert "--stock-sam2 --no-adapters" in err


# ------------------------------------------------------- the step (fake tracker)
class FakeTracker:
    """VideoTracker's interface, recording what the step asks of it."""

    def __init__(self):
        self.prompts, self.seen, self.resets = [], [], 0

    def reset(self):
        self.resets += 1
        self.ids = []

    def add_prompt(self, frame_idx, obj_id, image, **kw):
        if kw.get("points") and kw["points"][0][0] == 77:
            raise InputError("2 prompt points, but the engines take at most 1")
        self.prompts.append((frame_idx, obj_id, image.shape, sorted(kw)))
        self.ids.append(obj_id)

    def propagate(self, frames, num_frames=None):
        assert num_frames is None  # a live stream has no length
        for i, f in enumerate(frames):
            self.seen.append(i)
            m = np.zeros(f.shape[:2], bool)
            m[: i + 1] = True
            yield TrackedFrame(i, {o: ObjectMask(m, m.astype(np.float32), 1.0) for o in self.ids})


def test_tracking_step_numbers_frames_and_reprompts_on_reset():
    trk = FakeTracker()
    step = TrackingStep(trk, parse_prompts([("box", BOX), ("point", "b=100,20")]))
    frame = np.zeros((H, W, 3), np.uint8)
    r0 = step(frame)
    assert list(r0.masks) == ["obj1", "b"] and set(r0.timings) == {"prompt"}
    assert trk.prompts == [(0, "obj1", (H, W, 3), ["box"]), (0, "b", (H, W, 3), ["labels", "points"])]
    r1, r2 = step(frame), step(frame)
    assert set(r2.timings) == {"track"} and r1.masks["b"].sum() == 2 * W and r2.masks["obj1"].sum() == 3 * W
    assert trk.seen == [0, 1, 2]  # consecutive indices, whatever the source dropped
    step.reset()
    r3 = step(frame)
    assert set(r3.timings) == {"prompt"} and len(trk.prompts) == 4 and trk.seen[-1] == 0


def test_tracking_step_follows_a_source_changing_size():
    trk = FakeTracker()
    step = TrackingStep(trk, parse_prompts([("box", BOX)]))
    step(np.zeros((H, W, 3), np.uint8))
    r = step(np.zeros((2 * H, 2 * W, 3), np.uint8))  # e.g. a camera reconnected at another resolution
    assert r.masks["obj1"].shape == (2 * H, 2 * W) and r.masks["obj1"].sum() == 2 * 2 * (2 * W)
    assert trk.seen == [0, 1]


def test_tracking_step_prompt_errors_name_the_object():
    step = TrackingStep(FakeTracker(), parse_prompts([("point", "77,10"), ("neg-point", "5,5")]))
    with pytest.raises(PromptError, match=r"object obj1 \(--point 77,10 --neg-point 5,5\): 2 prompt points"):
        step(np.zeros((H, W, 3), np.uint8))
    step = TrackingStep(FakeTracker(), parse_prompts([("point", "170,10")]))
    with pytest.raises(PromptError, match="outside the first frame"):
        step(np.zeros((H, W, 3), np.uint8))


class FastLiveSource(FrameSource):
    """A live camera faster than inference: the loop has to drop frames."""

    live = True

    def __init__(self):
        super().__init__("fake-live")
        self.n = 0

    def open(self):
        pass

    def read(self):
        time.sleep(0.001)
        self.n += 1
        return np.full((H, W, 3), self.n % 256, np.uint8)

    def close(self):
        pass


def test_live_tracking_drops_frames_but_the_tracker_sees_consecutive_ones():
    class SlowTracker(FakeTracker):
        def propagate(self, frames, num_frames=None):
            for out in super().propagate(frames, num_frames):
                time.sleep(0.01)
                yield out

    trk = SlowTracker()
    summary = CameraLoop(FastLiveSource(), TrackingStep(trk, parse_prompts([("box", BOX)])),
                         options=LoopOptions(max_frames=60), log=lambda m: None).run()
    print(summary.text())
    assert summary.ok and summary.frames_in == 60 and summary.dropped > 0
    assert trk.seen == list(range(len(trk.seen))) and summary.frames_out <= len(trk.seen) < 60
    assert summary.stages["prompt"][2] == 1


# ------------------------------------------------------------ real engines
class ListSink:
    """Keeps the rendered frames exactly (no video codec in between)."""

    def __init__(self):
        self.path, self.frames = Path("<memory>"), []

    def write(self, frame):
        self.frames.append(frame.copy())

    def close(self):
        pass


def test_overlay_is_exactly_the_trackers_masks(stock_engines, tmp_path):
    """Loop in tracking mode, two objects: every rendered frame is the input with the masks
    VideoTracker.propagate gives on the same frames drawn in each object's colour."""
    n = 5
    video = write_video(tmp_path / "in.mp4", n)
    objects = parse_prompts([("box", BOX), ("point", "bg=130,105"), ("neg-point", "bg=60,60")])
    src = make_source(str(video))
    src.open()
    sink = ListSink()
    with VideoTracker.load(stock_engines, backend="onnxruntime") as trk:
        summary = CameraLoop(src, TrackingStep(trk, objects), output=sink,
                             options=LoopOptions(hud=False), log=lambda m: None).run()
    print(summary.text())
    assert summary.ok and summary.mode == "tracking"
    assert summary.frames_in == summary.frames_out == n and summary.dropped == 0
    assert summary.stages["prompt"][2] == 1 and summary.stages["track"][2] == n - 1
    frames_in = read_all(video)
    expected = offline_masks(stock_engines, frames_in, objects)
    colours = concept_colours(["obj1", "bg"])
    for i, (fin, fout, masks) in enumerate(zip(frames_in, sink.frames, expected)):
        assert any(0 < m.mean() < 1 for m in masks.values()), f"frame {i}: trivial masks"
        np.testing.assert_array_equal(fout, draw_masks(fin.copy(), masks, colours), err_msg=f"frame {i}")
        changed = np.abs(fout.astype(int) - fin.astype(int)).sum(axis=2) > 0
        union = np.logical_or(*masks.values())
        assert changed[union].mean() > 0.95  # blended where a mask is ...
        far = ~cv2.dilate(union.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
        assert not changed[far].any()  # ... and nowhere far from one


def test_cli_tracking_writes_every_frame(stock_engines, tmp_path, capsys):
    """Box + background clicks, one object: the written video has every frame, each much closer
    to the input with VideoTracker's mask drawn than to the input or to the mask moved by 2 px.
    (The exact overlay is checked without a codec in test_overlay_is_exactly_the_trackers_masks.)"""
    n = 6
    video = write_video(tmp_path / "in.mp4", n)
    prompt = [("box", BOX), ("neg-point", "5,5"), ("neg-point", "150,110")]
    rc, out, err = run_main(capsys, "--model-dir", stock_engines, "--source", video, "--track",
                            *[a for k, v in prompt for a in ("--" + k, v)],
                            "--output", tmp_path / "out.mp4", "--backend", "onnxruntime", "--no-hud")
    print(out, err)
    assert rc == 0, err
    assert "tracking 1 object(s): obj1: box (30,35,80,85) + 2 background clicks" in err
    assert "camera loop summary: tracking, source" in out
    assert f"frames in {n}, out {n}, dropped 0, reconnects 0" in out
    for stage in ("capture", "preprocess", "prompt", "track", "draw", "write"):
        assert f"\n  {stage} " in out
    frames_in, frames_out = read_all(video), read_all(tmp_path / "out.mp4")
    assert len(frames_out) == n
    expected = offline_masks(stock_engines, frames_in, parse_prompts(prompt))
    colours = concept_colours(["obj1"])

    def dist(a, b):
        return float(np.abs(a.astype(int) - b.astype(int)).mean())

    for i, (fin, fout, masks) in enumerate(zip(frames_in, frames_out, expected)):
        assert 0.05 < masks["obj1"].mean() < 0.95, f"frame {i}: trivial mask"
        want = draw_masks(fin.copy(), masks, colours)
        shifted = draw_masks(fin.copy(), {"obj1": np.roll(masks["obj1"], 2, axis=0)}, colours)
        d = dist(fout, want), dist(fout, fin), dist(fout, shifted)
        print(f"frame {i}: mean |out - expected| {d[0]:.1f}, vs input {d[1]:.1f}, vs mask moved 2 px {d[2]:.1f}")
        assert d[0] < 0.3 * d[1] and d[0] < 0.6 * d[2], d  # mp4v is lossy: relative, not exact


@pytest.mark.parametrize("args, message", [
    (["--box", "30,35,200,85"], "error: inference: object obj1 (--box 30,35,200,85): (200, 85) is outside the first "
                                "frame, which is 160x120"),
    (["--track-mask", "{small}"], "is 50x40 (WxH) but the first frame is 160x120"),
])
def test_cli_prompt_not_fitting_the_first_frame(stock_engines, tmp_path, capsys, args, message):
    small = np.zeros((40, 50), np.uint8)
    small[10:20, 10:20] = 255
    cv2.imwrite(str(tmp_path / "small.png"), small)
    args = [a.format(small=tmp_path / "small.png") for a in args]
    rc, out, err = run_main(capsys, "--model-dir", stock_engines, "--source", write_video(tmp_path / "in.mp4", 3),
                            "--track", *args, "--output", tmp_path / "out.mp4", "--backend", "onnxruntime")
    assert rc == EXIT_INPUT and message in err, err
    assert "frames in" in out and not (tmp_path / "out.mp4").exists()
