"""The camera loop: real engines on a small video, reconnects, stop, and memory flatness."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from runtime.camera.loop import CameraLoop, LoopOptions, VideoSink  # noqa: E402
from runtime.camera.sources import FrameSource, RetryPolicy, SourceError, make_source  # noqa: E402
from runtime.sam2.fewshot import FewShotSegmenter  # noqa: E402
from runtime.sam2.results import ConceptResult, SegmentationResult  # noqa: E402

W, H = 160, 120


def scene(i: int) -> np.ndarray:
    """BGR frame: grey background with a red square drifting right."""
    f = np.full((H, W, 3), 90, np.uint8)
    x = 30 + 3 * i
    f[35:85, x:x + 50] = (40, 40, 220)
    return f


def square_mask() -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[35:85, 30:80] = True
    return m


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


class FakeLiveSource(FrameSource):
    """A live source that delivers ``fail_after`` frames, then drops; reopening works after
    ``fail_opens`` failed attempts (``fail_opens=None``: never again)."""

    live = True

    def __init__(self, fail_after=None, fail_opens=0, shape=(H, W), on_read=None):
        super().__init__("fake-live")
        self.fail_after, self.fail_opens, self.shape = fail_after, fail_opens, shape
        self.on_read = on_read
        self.opens = self.reads = 0
        self._is_open = False
        self._n = 0
        self._frame = np.zeros((*shape, 3), np.uint8)

    def open(self):
        self.opens += 1
        if self.opens > 1:
            if self.fail_opens is None or self.opens - 1 <= self.fail_opens:
                raise SourceError("fake camera not there yet")
        self._is_open, self._n = True, 0

    def read(self):
        if not self._is_open or (self.fail_after is not None and self.opens == 1 and self._n >= self.fail_after):
            return None
        self._n += 1
        self.reads += 1
        if self.on_read:
            self.on_read(self.reads)
        self._frame[:] = self.reads % 256
        return self._frame.copy()

    def close(self):
        self._is_open = False


class CheapSegmenter:
    """Stand-in for inference, used only by the memory-flatness test of the loop machinery."""

    def __init__(self, shape):
        self.mask = np.zeros(shape, bool)
        self.mask[shape[0] // 4: shape[0] // 2, shape[1] // 4: shape[1] // 2] = True

    def segment(self, rgb):
        t = {k: 0.0 for k in ("preprocess", "image_encoder", "memory_attention", "mask_decoder", "postprocess")}
        return SegmentationResult({"thing": ConceptResult(self.mask, self.mask.astype(np.float32), 1.0)}, t)


@pytest.fixture(scope="module")
def seg(tiny_engines):
    s = FewShotSegmenter.load(tiny_engines, backend="onnxruntime")
    s.add_reference(cv2.cvtColor(scene(0), cv2.COLOR_BGR2RGB), square_mask(), concept="square")
    yield s
    s.close()


def test_video_file_headless_every_frame_written(seg, tmp_path):
    n = 6
    src = make_source(str(write_video(tmp_path / "in.mp4", n)))
    src.open()
    out = VideoSink(tmp_path / "out.mp4", fps=10)
    summary = CameraLoop(src, seg, output=out, log=lambda m: None).run()
    print(summary.text())
    assert summary.ok and not summary.live
    assert summary.frames_in == summary.frames_out == n and summary.dropped == 0
    for stage in ("capture", "preprocess", "image_encoder", "memory_attention", "mask_decoder",
                  "postprocess", "draw", "write"):
        med, p90, count = summary.stages[stage]
        assert count == n and 0 <= med <= p90
    assert not out.tmp.exists()
    frames_in, frames_out = read_all(tmp_path / "in.mp4"), read_all(tmp_path / "out.mp4")
    assert len(frames_out) == len(frames_in) == n
    changed = [np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(frames_in, frames_out)]
    assert min(changed) > 1.0  # overlay (masks and/or HUD) drawn on every frame


def test_live_source_reconnects_after_drop(seg):
    src = FakeLiveSource(fail_after=2, fail_opens=2)
    src.open()
    opts = LoopOptions(max_frames=4, retry=RetryPolicy(retries=4, initial_delay=0.01))
    logs = []
    summary = CameraLoop(src, seg, options=opts, log=logs.append).run()
    print(summary.text())
    assert summary.ok, summary.error
    assert summary.reconnects == 1 and src.opens == 4  # first open, 2 failed attempts, success
    assert summary.frames_in == 4
    assert summary.frames_out + summary.dropped == 4 and summary.frames_out >= 1
    assert sum("reconnect attempt" in m for m in logs) == 3


def test_live_source_lost_for_good_stops_with_error(seg):
    src = FakeLiveSource(fail_after=2, fail_opens=None)
    src.open()
    t = time.monotonic()
    opts = LoopOptions(retry=RetryPolicy(retries=3, initial_delay=0.01))
    summary = CameraLoop(src, seg, options=opts, log=lambda m: None).run()
    assert time.monotonic() - t < 10
    assert summary.error and "lost" in summary.error and "3 reconnect attempts" in summary.error
    assert summary.frames_in == 2 and summary.reconnects == 0


def test_request_stop_mid_run_finalizes_writer(tmp_path):
    src = FakeLiveSource(shape=(48, 64))
    src.open()
    loop = CameraLoop(src, CheapSegmenter((48, 64)), output=VideoSink(tmp_path / "o.mp4"),
                      log=lambda m: None)
    threading.Timer(0.3, loop.request_stop, kwargs={"interrupted": True}).start()
    summary = loop.run()
    assert summary.interrupted and summary.ok and summary.frames_out > 0
    assert len(read_all(tmp_path / "o.mp4")) == summary.frames_out


def _rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20
    except OSError:  # not Linux: peak RSS is the best available figure
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_long_run_memory_is_flat(tmp_path):
    """2000 frames through capture/queues/draw/write (cheap stand-in for inference)."""
    n, shape = 2000, (96, 128)
    rss = {}

    def on_read(k):
        if k in (300, n):
            rss[k] = _rss_mib()
        if k % 4 == 0:
            time.sleep(0.0005)  # a camera has a frame rate; lets the other stages run

    src = FakeLiveSource(shape=shape, on_read=on_read)
    src.open()
    loop = CameraLoop(src, CheapSegmenter(shape), output=VideoSink(tmp_path / "long.mp4", fps=30),
                      options=LoopOptions(max_frames=n), log=lambda m: None)
    summary = loop.run()
    growth = rss[n] - rss[300]
    print(summary.text())
    print(f"RSS after 300 frames {rss[300]:.1f} MiB, after {n}: {rss[n]:.1f} MiB, growth {growth:+.2f} MiB "
          f"(frames out {summary.frames_out}, dropped {summary.dropped})")
    assert summary.ok and summary.frames_in == n
    assert summary.frames_out + summary.dropped == n and summary.frames_out > 100
    assert growth < 8.0
