"""Frame sources behind one small interface: ``open() / read() / close()`` + ``live``.

A source string is turned into a source by :func:`make_source`:

* ``0`` or ``/dev/video0``: a USB / V4L2 camera (live)
* ``csi://0?width=1280&height=720&fps=30&flip=0``: a Jetson CSI camera through a
  GStreamer ``nvarguscamerasrc ... ! appsink`` pipeline (live, needs OpenCV
  built with GStreamer, as on JetPack)
* ``gst://<pipeline ending in appsink>``: any GStreamer pipeline (live)
* ``rtsp://``, ``rtsps://``, ``http://``, ``https://``: network streams (live)
* a video file: ``clip.mp4`` (ends cleanly)
* a folder of images (sorted by name) or one image file (ends cleanly)

``read()`` returns a BGR ``uint8`` frame, or ``None`` when no frame came: the
end for files, a drop for live sources (the loop then reconnects them with
:class:`RetryPolicy`). Opening is time-bounded (:func:`open_bounded`) so a
camera or stream that never answers gives an error instead of a hang.
"""

from __future__ import annotations

import abc
import os
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, TypeVar
from urllib.parse import parse_qs, urlsplit

import numpy as np

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https")

from runtime.errors import SourceError  # noqa: F401  (raised here, re-exported)

T = TypeVar("T")


@dataclass
class RetryPolicy:
    """Bounded exponential backoff for reconnecting live sources."""

    retries: int = 5          # attempts after a drop before giving up
    initial_delay: float = 0.5  # seconds before the first attempt
    factor: float = 2.0
    max_delay: float = 8.0

    def delays(self):
        d = self.initial_delay
        for _ in range(max(0, self.retries)):
            yield min(d, self.max_delay)
            d *= self.factor


def open_bounded(fn: Callable[[], T], timeout: float, what: str) -> T:
    """Run ``fn`` (a blocking open) in a daemon thread; error if it takes longer than ``timeout``."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    t = threading.Thread(target=target, name=f"open {what}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise SourceError(f"{what} did not open within {timeout:g} s (no answer); check it is "
                          "connected / reachable")
    if "error" in box:
        raise box["error"]
    return box["value"]


class FrameSource(abc.ABC):
    """open / read / close; ``live`` sources drop frames and reconnect, files do not."""

    live: bool = False

    def __init__(self, name: str):
        self.name = name

    @abc.abstractmethod
    def open(self) -> None:
        """Acquire the device/file; raise :class:`SourceError` with a clear message if impossible."""

    @abc.abstractmethod
    def read(self) -> Optional[np.ndarray]:
        """The next BGR uint8 frame, or ``None`` (end of a file; a drop for a live source)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the device/file (safe to call twice)."""

    @property
    def fps(self) -> Optional[float]:
        """The source's nominal frame rate if known."""
        return None

    def __enter__(self) -> "FrameSource":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, live={self.live})"


class CaptureSource(FrameSource):
    """Anything ``cv2.VideoCapture`` opens: cameras, GStreamer pipelines, streams, video files."""

    def __init__(self, name: str, target, api: int, live: bool, open_timeout: float = 10.0,
                 read_timeout: float = 5.0):
        super().__init__(name)
        self.target, self.api, self.live = target, api, live
        self.open_timeout, self.read_timeout = open_timeout, read_timeout
        self._cap = None

    def _make(self):
        import cv2

        params: List[int] = []
        if self.api in (cv2.CAP_FFMPEG, cv2.CAP_ANY) and isinstance(self.target, str):
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout * 1000),
                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.read_timeout * 1000)]
        cap = cv2.VideoCapture(self.target, self.api, params) if params else cv2.VideoCapture(self.target, self.api)
        if not cap.isOpened():
            cap.release()
            raise SourceError(self._cannot_open())
        return cap

    def _cannot_open(self) -> str:
        import cv2

        msg = f"cannot open source {self.name!r}"
        if self.api == cv2.CAP_GSTREAMER and "GStreamer:                   YES" not in cv2.getBuildInformation():
            return msg + ": this OpenCV was built without GStreamer (use JetPack's OpenCV for CSI cameras)"
        if isinstance(self.target, int) or str(self.target).startswith("/dev/video"):
            return msg + ": no such camera, or it is busy / not permitted (check `ls /dev/video*`)"
        return msg

    def open(self) -> None:
        self.close()
        self._cap = open_bounded(self._make, self.open_timeout + 1.0, f"source {self.name!r}")

    def read(self) -> Optional[np.ndarray]:
        if self._cap is None:
            return None
        ok, frame = self._cap.read()
        if not ok or frame is None:
            return None
        if frame.ndim == 2:
            import cv2

            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        return frame

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    @property
    def fps(self) -> Optional[float]:
        if self._cap is None:
            return None
        import cv2

        f = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        return f if 0.5 < f < 1000 else None


class ImageFolderSource(FrameSource):
    """Image files (one file, or a folder's images sorted by name), read once."""

    live = False

    def __init__(self, name: str, files: List[Path], fps: float = 0.0):
        super().__init__(name)
        self.files = list(files)
        self._i = 0
        self._fps = fps

    def open(self) -> None:
        if not self.files:
            raise SourceError(f"source folder {self.name!r} has no images ({', '.join(IMAGE_EXTS)})")
        self._i = 0
        self.skipped: List[Path] = []

    def read(self) -> Optional[np.ndarray]:
        import cv2

        if self._i >= len(self.files):
            return None
        while self._i < len(self.files):  # an unreadable file is skipped (with a warning), not the end
            path = self.files[self._i]
            self._i += 1
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if frame is not None:
                return frame
            self.skipped.append(path)
            warnings.warn(f"source folder {self.name!r}: cannot read image {path.name}; skipped", RuntimeWarning,
                          stacklevel=2)
        if len(self.skipped) == len(self.files):
            raise SourceError(f"source folder {self.name!r}: none of its {len(self.files)} images can be read")
        return None

    def close(self) -> None:
        self._i = len(self.files)

    @property
    def fps(self) -> Optional[float]:
        return self._fps or None


def csi_pipeline(sensor_id: int = 0, width: int = 1280, height: int = 720, fps: int = 30,
                 flip: int = 0) -> str:
    """The GStreamer pipeline for a Jetson CSI camera, delivering BGR frames to appsink."""
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM), width=(int){width}, height=(int){height}, "
        f"format=(string)NV12, framerate=(fraction){fps}/1 ! "
        f"nvvidconv flip-method={flip} ! "
        f"video/x-raw, width=(int){width}, height=(int){height}, format=(string)BGRx ! "
        "videoconvert ! video/x-raw, format=(string)BGR ! "
        "appsink drop=true max-buffers=1 sync=false"
    )


def _parse_csi(spec: str) -> str:
    parts = urlsplit(spec)
    sensor = parts.netloc or "0"
    if not sensor.isdigit():
        raise SourceError(f"bad CSI source {spec!r}: expected csi://SENSOR_ID?width=..&height=..&fps=..")
    allowed = {"width", "height", "fps", "flip"}
    q = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = set(q) - allowed
    if unknown:
        raise SourceError(f"bad CSI source {spec!r}: unknown option(s) {sorted(unknown)}; "
                          f"allowed: {sorted(allowed)}")
    try:
        opts = {k: int(v) for k, v in q.items()}
    except ValueError:
        raise SourceError(f"bad CSI source {spec!r}: options must be integers") from None
    return csi_pipeline(int(sensor), **opts)


def make_source(spec: str, open_timeout: float = 10.0, fps: float = 0.0) -> FrameSource:
    """A :class:`FrameSource` for a source string (see the module doc); unknown -> SourceError."""
    import cv2

    s = str(spec).strip()
    if not s:
        raise SourceError("empty source")
    v4l2 = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
    if s.isdigit():
        return CaptureSource(f"camera {s}", int(s), v4l2, live=True, open_timeout=open_timeout)
    if s.startswith("/dev/video"):
        if not os.path.exists(s):
            raise SourceError(f"camera {s} does not exist (check `ls /dev/video*`)")
        return CaptureSource(s, s, v4l2, live=True, open_timeout=open_timeout)
    scheme = urlsplit(s).scheme.lower() if "://" in s else ""
    if scheme == "csi":
        return CaptureSource(s, _parse_csi(s), cv2.CAP_GSTREAMER, live=True, open_timeout=open_timeout)
    if scheme == "gst":
        return CaptureSource(s, s[len("gst://"):], cv2.CAP_GSTREAMER, live=True, open_timeout=open_timeout)
    if scheme in NETWORK_SCHEMES:
        return CaptureSource(s, s, cv2.CAP_FFMPEG, live=True, open_timeout=open_timeout)
    if scheme:
        raise SourceError(f"unknown source scheme {scheme!r} in {s!r}; use a camera index, /dev/videoN, "
                          "csi://N, gst://PIPELINE, rtsp:// or http(s):// URL, a video file or an image folder")
    p = Path(s)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS)
        return ImageFolderSource(s, files, fps)
    if p.is_file():
        if p.suffix.lower() in IMAGE_EXTS:
            return ImageFolderSource(s, [p], fps)
        return CaptureSource(s, s, cv2.CAP_ANY, live=False, open_timeout=open_timeout)
    raise SourceError(f"unknown source {s!r}: not a camera index, /dev/videoN, csi://, gst://, "
                      "rtsp:// or http(s):// URL, and no such file or folder")
