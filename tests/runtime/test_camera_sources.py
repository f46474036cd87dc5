"""Frame sources, queues and backoff of the camera loop (no engines needed)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from runtime.camera.loop import CLOSED, EMPTY, FrameQueue  # noqa: E402
from runtime.camera.sources import (  # noqa: E402
    CaptureSource, ImageFolderSource, RetryPolicy, SourceError, csi_pipeline, make_source, open_bounded,
)


def write_video(path, n=5, w=64, h=48, fps=10.0):
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert wr.isOpened()
    for i in range(n):
        f = np.full((h, w, 3), (i * 20) % 255, np.uint8)
        wr.write(f)
    wr.release()
    return path


def test_unknown_source_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="unknown source"):
        make_source(str(tmp_path / "nope.mp4"))
    with pytest.raises(SourceError, match="unknown source scheme 'ftp'"):
        make_source("ftp://host/x")
    with pytest.raises(SourceError, match="does not exist"):
        make_source("/dev/video987")


def test_source_kinds(tmp_path):
    cam = make_source("0")
    assert isinstance(cam, CaptureSource) and cam.live and cam.target == 0
    net = make_source("rtsp://192.0.2.1/stream")
    assert net.live and net.api == cv2.CAP_FFMPEG
    video = make_source(str(write_video(tmp_path / "v.mp4")))
    assert isinstance(video, CaptureSource) and not video.live
    (tmp_path / "imgs").mkdir()
    folder = make_source(str(tmp_path / "imgs"))
    assert isinstance(folder, ImageFolderSource) and not folder.live
    with pytest.raises(SourceError, match="no images"):
        folder.open()


def test_csi_pipeline_built_from_options():
    src = make_source("csi://1?width=640&height=480&fps=60&flip=2")
    assert src.live and src.api == cv2.CAP_GSTREAMER
    assert src.target == csi_pipeline(1, 640, 480, 60, 2)
    for part in ("nvarguscamerasrc sensor-id=1", "width=(int)640", "height=(int)480",
                 "framerate=(fraction)60/1", "flip-method=2", "format=(string)BGR", "appsink"):
        assert part in src.target
    with pytest.raises(SourceError, match="unknown option"):
        make_source("csi://0?exposure=3")
    with pytest.raises(SourceError, match="integers"):
        make_source("csi://0?width=big")


def test_unopenable_camera_fails_fast():
    t = time.monotonic()
    with pytest.raises(SourceError, match="cannot open source 'camera 99'"):
        make_source("99", open_timeout=2).open()
    assert time.monotonic() - t < 3


def test_open_is_time_bounded():
    t = time.monotonic()
    with pytest.raises(SourceError, match="did not open within 0.2 s"):
        open_bounded(lambda: time.sleep(5), 0.2, "slow camera")
    assert time.monotonic() - t < 1


def test_video_file_reads_all_frames_then_ends(tmp_path):
    src = make_source(str(write_video(tmp_path / "v.mp4", n=7)))
    with src:
        frames = []
        while (f := src.read()) is not None:
            frames.append(f)
    assert len(frames) == 7 and frames[0].shape == (48, 64, 3) and frames[0].dtype == np.uint8


def test_image_folder_sorted(tmp_path):
    for i in (2, 0, 1):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), np.full((8, 8, 3), i * 50, np.uint8))
    with make_source(str(tmp_path)) as src:
        vals = [int(src.read()[0, 0, 0]) for _ in range(3)]
        assert src.read() is None
    assert vals == [0, 50, 100]


def test_retry_policy_is_bounded_exponential():
    assert list(RetryPolicy(retries=5, initial_delay=0.5, factor=2, max_delay=3).delays()) == [0.5, 1, 2, 3, 3]
    assert list(RetryPolicy(retries=0).delays()) == []


def test_queue_live_newest_wins():
    q = FrameQueue(2, drop_oldest=True)
    for i in range(5):
        assert q.put(i)
    assert q.dropped == 3
    assert [q.get(), q.get()] == [3, 4]
    assert q.get(timeout=0.01) is EMPTY
    q.close()
    assert q.get() is CLOSED and not q.put(9)


def test_queue_file_blocks_and_drops_nothing():
    q = FrameQueue(1, drop_oldest=False)
    got = []

    def consumer():
        while (x := q.get()) is not CLOSED:
            got.append(x)
            time.sleep(0.002)

    t = threading.Thread(target=consumer)
    t.start()
    for i in range(50):
        assert q.put(i)
    q.close()
    t.join(5)
    assert got == list(range(50)) and q.dropped == 0


def test_image_folder_skips_an_unreadable_image_with_a_warning(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((8, 8, 3), i * 50, np.uint8))
    (tmp_path / "1.png").write_bytes(b"not a png")
    src = make_source(str(tmp_path))
    src.open()
    with pytest.warns(RuntimeWarning, match="cannot read image 1.png; skipped"):
        frames = [src.read(), src.read(), src.read()]
    assert [f[0, 0, 0] for f in frames[:2]] == [0, 100] and frames[2] is None
    assert [p.name for p in src.skipped] == ["1.png"]
    for i in (0, 2):
        (tmp_path / f"{i}.png").write_bytes(b"broken")
    src.open()
    with pytest.warns(RuntimeWarning), pytest.raises(SourceError, match="none of its 3 images can be read"):
        src.read()
