"""The camera loop: capture -> inference -> rendering, three threads, bounded queues.

No module-level state: everything lives in a :class:`CameraLoop` instance.

* Live sources: each queue keeps only the newest frames (``queue_size``); an
  older frame is dropped and counted when a newer one arrives, so latency
  stays bounded when inference is slower than the camera. A live source that
  stops delivering is closed and reopened with bounded exponential backoff
  (:class:`~runtime.camera.sources.RetryPolicy`).
* Files / image folders: puts block, nothing is dropped, the run ends when the
  source ends and every frame has been rendered.

What inference does is a pluggable :class:`~runtime.camera.steps.InferenceStep`:
few-shot segmentation (:class:`~runtime.camera.steps.SegmenterStep`; a bare
segmenter with ``segment(rgb) -> SegmentationResult`` is wrapped in one) or
SAM2 tracking (:class:`~runtime.camera.steps.TrackingStep`). The loop does not
own the step's product (the caller closes it). Timings of every stage of
every frame are kept in bounded windows and summarised as median / p90 at the end.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Deque, Dict, Optional, Tuple

import numpy as np

from runtime.camera.overlay import concept_colours, draw_hud, draw_masks
from runtime.camera.sources import FrameSource, RetryPolicy, SourceError
from runtime.camera.steps import FEWSHOT_STAGES, InferenceStep, SegmenterStep, StepResult
from runtime.errors import EXIT_FAILURE, EXIT_SOURCE, Sam2EdgeError, UsageError

INFER_STAGES = FEWSHOT_STAGES
STAGE_ORDER = ("capture",) + INFER_STAGES + ("prompt", "track", "draw", "write", "display")


class _Closed:
    pass


CLOSED = _Closed()  # what FrameQueue.get returns once closed and drained
EMPTY = None        # what FrameQueue.get returns on timeout


class FrameQueue:
    """Bounded queue: ``drop_oldest`` (live: newest wins, drops counted) or blocking put (files)."""

    def __init__(self, maxsize: int, drop_oldest: bool):
        if maxsize < 1:
            raise UsageError("queue size must be >= 1")
        self.maxsize, self.drop_oldest = maxsize, drop_oldest
        self._items: Deque = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.dropped = 0

    def put(self, item) -> bool:
        """Add ``item``; False if the queue was closed (the consumer is gone)."""
        with self._cond:
            while not self._closed and len(self._items) >= self.maxsize:
                if self.drop_oldest:
                    self._items.popleft()
                    self.dropped += 1
                else:
                    self._cond.wait(0.1)
            if self._closed:
                return False
            self._items.append(item)
            self._cond.notify_all()
            return True

    def get(self, timeout: Optional[float] = None):
        """The oldest item; ``CLOSED`` once closed and empty; ``EMPTY`` (None) on timeout."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items:
                if self._closed:
                    return CLOSED
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return EMPTY
                self._cond.wait(0.1 if left is None else min(left, 0.1))
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def close(self, discard: bool = False) -> None:
        with self._cond:
            self._closed = True
            if discard:
                self._items.clear()
            self._cond.notify_all()

    def __len__(self) -> int:
        return len(self._items)


class StageTimes:
    """Per-stage durations (seconds) over the last ``window`` frames (bounded memory)."""

    def __init__(self, window: int = 10000):
        self.window = window
        self._d: Dict[str, Deque[float]] = {}
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._d.setdefault(stage, deque(maxlen=self.window)).append(float(seconds))

    def stats(self) -> Dict[str, Tuple[float, float, int]]:
        """``{stage: (median_s, p90_s, samples)}`` in pipeline order."""
        with self._lock:
            snap = {k: np.asarray(v) for k, v in self._d.items() if v}
        order = [s for s in STAGE_ORDER if s in snap] + sorted(set(snap) - set(STAGE_ORDER))
        return {s: (float(np.median(snap[s])), float(np.percentile(snap[s], 90)), len(snap[s]))
                for s in order}


@dataclass
class Summary:
    source: str
    live: bool
    mode: str = ""
    frames_in: int = 0
    frames_out: int = 0
    dropped: int = 0
    reconnects: int = 0
    wall_s: float = 0.0
    stages: Dict[str, Tuple[float, float, int]] = field(default_factory=dict)
    error: Optional[str] = None
    interrupted: bool = False
    output: Optional[str] = None
    exit_code: int = 0  # the error's exit status (runtime.errors): 2 bad input, 3 source, 1 other

    @property
    def ok(self) -> bool:
        return self.error is None

    def text(self) -> str:
        fps = self.frames_out / self.wall_s if self.wall_s > 0 else 0.0
        lines = [
            "camera loop summary: " + (f"{self.mode}, " if self.mode else "")
            + f"source {self.source} ({'live' if self.live else 'file'})"
            + (", interrupted" if self.interrupted else ""),
            f"  frames in {self.frames_in}, out {self.frames_out}, dropped {self.dropped}, "
            f"reconnects {self.reconnects}, wall {self.wall_s:.2f} s, {fps:.2f} FPS",
            f"  {'stage':<18}{'median ms':>10}{'p90 ms':>10}{'n':>7}",
        ]
        for s, (med, p90, n) in self.stages.items():
            lines.append(f"  {s:<18}{med * 1e3:>10.2f}{p90 * 1e3:>10.2f}{n:>7}")
        if self.output:
            lines.append(f"  output: {self.output}")
        if self.error:
            lines.append(f"  error: {self.error}")
        return "\n".join(lines)


class VideoSink:
    """``cv2.VideoWriter`` (mp4v) to a temporary name beside ``path``, renamed on close."""

    def __init__(self, path, fps: float = 30.0, fourcc: str = "mp4v"):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix or '.mp4'}")
        self.fps, self.fourcc = fps, fourcc
        self._writer = None
        self._size: Optional[Tuple[int, int]] = None
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        import cv2

        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            h, w = frame.shape[:2]
            self._size = (w, h)
            self._writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*self.fourcc),
                                           float(self.fps), self._size)
            if not self._writer.isOpened():
                self._writer = None
                raise OSError(f"cannot open a video writer for {self.path} ({self.fourcc})")
        if (frame.shape[1], frame.shape[0]) != self._size:  # e.g. a camera reconnected at another size
            frame = cv2.resize(frame, self._size)
        self._writer.write(frame)
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self.tmp.exists():
            if self.frames:
                self.tmp.replace(self.path)
            else:
                self.tmp.unlink()


class Display:
    """``cv2.imshow`` window; :meth:`show` returns the pressed key (or -1)."""

    def __init__(self, window: str = "sam2-edge"):
        self.window = window
        self._open = False

    def show(self, frame: np.ndarray, wait_ms: int = 1) -> int:
        import cv2

        if not self._open:
            cv2.namedWindow(self.window, cv2.WINDOW_NORMAL)
            self._open = True
        cv2.imshow(self.window, frame)
        return cv2.waitKey(wait_ms) & 0xFF

    def close(self) -> None:
        if self._open:
            import cv2

            cv2.destroyWindow(self.window)
            cv2.waitKey(1)
            self._open = False


@dataclass
class _Item:
    index: int
    frame: np.ndarray  # BGR
    times: Dict[str, float]
    result: Optional[StepResult] = None


@dataclass
class LoopOptions:
    queue_size: int = 2
    max_frames: Optional[int] = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    hud: bool = True
    alpha: float = 0.45
    stats_window: int = 10000
    snapshot_dir: Path = Path(".")
    stop_timeout: float = 5.0  # how long run() waits for stages after a stop


class CameraLoop:
    """capture -> inference -> rendering for one source; :meth:`run` returns a :class:`Summary`.

    The source must already be open (so that open errors surface before the
    the model folder loads); the loop closes it. ``step`` is an
    :class:`~runtime.camera.steps.InferenceStep`, or a segmenter (wrapped in a
    :class:`~runtime.camera.steps.SegmenterStep` with ``on_reset``). The step's
    ``reset()`` runs on the inference thread when the ``r`` key is pressed.
    """

    def __init__(self, source: FrameSource, step, *, output: Optional[VideoSink] = None,
                 display: Optional[Display] = None, options: Optional[LoopOptions] = None,
                 on_reset: Optional[Callable[[object], None]] = None,
                 log: Callable[[str], None] = print):
        if not isinstance(step, InferenceStep):
            step = SegmenterStep(step, on_reset)
        elif on_reset is not None:
            raise TypeError("on_reset is for a bare segmenter; an InferenceStep resets itself (reset())")
        self.source, self.step = source, step
        self.output, self.display = output, display
        self.opt = options or LoopOptions()
        self.log = log
        drop = bool(source.live)
        self.q_frames = FrameQueue(self.opt.queue_size, drop)
        self.q_results = FrameQueue(self.opt.queue_size, drop)
        self.times = StageTimes(self.opt.stats_window)
        self.summary = Summary(str(source.name), bool(source.live), mode=step.mode,
                               output=str(output.path) if output else None)
        self._stop = threading.Event()
        self._reset = threading.Event()
        self._paused = False
        self._colours: Dict[str, Tuple[int, int, int]] = {}
        self._snapshots = 0
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- control
    def request_stop(self, interrupted: bool = False) -> None:
        """Stop every stage soon (Ctrl-C / SIGTERM / ``q``); safe from any thread or a signal handler."""
        if interrupted:
            self.summary.interrupted = True
        self._stop.set()
        self.q_frames.close(discard=True)
        self.q_results.close(discard=True)

    def request_reset(self) -> None:
        self._reset.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def _fail(self, msg: str, exit_code: int = EXIT_FAILURE) -> None:
        with self._lock:
            if self.summary.error is None:
                self.summary.error = msg
                self.summary.exit_code = exit_code
        self.request_stop()

    # ------------------------------------------------------------------ stages
    def _reconnect(self) -> bool:
        src = self.source
        src.close()
        for attempt, delay in enumerate(self.opt.retry.delays(), 1):
            self.log(f"[camera] {src.name}: no frame; reconnect attempt {attempt}/{self.opt.retry.retries} "
                     f"in {delay:.2f} s")
            if self._stop.wait(delay):
                return False
            try:
                src.open()
            except SourceError as e:
                self.log(f"[camera] {e}")
                continue
            self.summary.reconnects += 1
            return True
        self._fail(f"source {src.name!r} lost: no frame after {self.opt.retry.retries} reconnect attempts",
                   EXIT_SOURCE)
        return False

    def _capture(self) -> None:
        src, n = self.source, 0
        try:
            while not self._stop.is_set():
                if self.opt.max_frames is not None and n >= self.opt.max_frames:
                    break
                t0 = time.perf_counter()
                frame = src.read()
                dt = time.perf_counter() - t0
                if frame is None:
                    if src.live and self._reconnect():
                        continue
                    break
                self.times.add("capture", dt)
                self.summary.frames_in += 1
                if not self.q_frames.put(_Item(n, frame, {"capture": dt})):
                    break
                n += 1
        except Sam2EdgeError as e:
            self._fail(f"capture: {e}", e.exit_code)
        except Exception as e:  # noqa: BLE001 - reported in the summary, loop stops
            self._fail(f"capture: {type(e).__name__}: {e}")
        finally:
            try:
                src.close()
            finally:
                self.q_frames.close()

    def _infer(self) -> None:
        import cv2

        try:
            while not self._stop.is_set():
                item = self.q_frames.get()
                if item is CLOSED or item is EMPTY:
                    break
                if self._reset.is_set():
                    self._reset.clear()
                    self.step.reset()
                    self._colours = {}
                t0 = time.perf_counter()
                rgb = cv2.cvtColor(item.frame, cv2.COLOR_BGR2RGB)
                conv = time.perf_counter() - t0
                res = self.step(rgb)
                timings = {"preprocess": conv + float(res.timings.get("preprocess", 0.0))}
                timings.update((k, v) for k, v in res.timings.items() if k != "preprocess")
                for s, v in timings.items():
                    item.times[s] = float(v)
                    self.times.add(s, float(v))
                item.result = res
                if not self.q_results.put(item):
                    break
        except Sam2EdgeError as e:
            self._fail(f"inference: {e}", e.exit_code)
        except Exception as e:  # noqa: BLE001
            self._fail(f"inference: {type(e).__name__}: {e}")
        finally:
            self.q_frames.close(discard=True)  # unblock capture if we left early
            self.q_results.close()

    def _handle_key(self, key: int, frame: Optional[np.ndarray]) -> None:
        import cv2

        if key in (ord("q"), 27):
            self.log("[camera] quit")
            self.request_stop()
        elif key == ord("p"):
            self._paused = not self._paused
            self.log("[camera] paused" if self._paused else "[camera] resumed")
        elif key == ord("s") and frame is not None:
            self._snapshots += 1
            d = Path(self.opt.snapshot_dir)
            d.mkdir(parents=True, exist_ok=True)
            p = d / f"snapshot_{time.strftime('%Y%m%d_%H%M%S')}_{self._snapshots:03d}.png"
            cv2.imwrite(str(p), frame)
            self.log(f"[camera] snapshot {p}")
        elif key == ord("r"):
            self.log("[camera] resetting references" if self.step.mode == "few-shot"
                     else f"[camera] resetting ({self.step.mode}: prompting again on the next frame)")
            self.request_reset()

    def _render(self) -> None:
        last_out: Optional[float] = None
        fps = 0.0
        shown: Optional[np.ndarray] = None
        try:
            while not self._stop.is_set():
                if self._paused and self.display is not None:
                    self._handle_key(self.display.show(shown, 30) if shown is not None else -1, shown)
                    continue
                item = self.q_results.get(timeout=0.05 if self.display is not None else None)
                if item is CLOSED:
                    break
                if item is EMPTY:
                    if self.display is not None and shown is not None:
                        self._handle_key(self.display.show(shown), shown)
                    continue
                t0 = time.perf_counter()
                frame = item.frame
                masks = item.result.masks
                for c in masks:
                    if c not in self._colours:
                        self._colours = concept_colours(list(self._colours) + [c])
                draw_masks(frame, masks, self._colours, self.opt.alpha)
                now = time.perf_counter()
                if last_out is not None:
                    inst = 1.0 / max(now - last_out, 1e-6)
                    fps = inst if fps == 0.0 else 0.9 * fps + 0.1 * inst
                last_out = now
                if self.opt.hud:
                    draw_hud(frame, fps, {k: v * 1e3 for k, v in item.times.items()})
                t1 = time.perf_counter()
                self.times.add("draw", t1 - t0)
                if self.output is not None:
                    self.output.write(frame)
                    self.times.add("write", time.perf_counter() - t1)
                if self.display is not None:
                    t2 = time.perf_counter()
                    key = self.display.show(frame)
                    self.times.add("display", time.perf_counter() - t2)
                    shown = frame
                    self._handle_key(key, frame)
                self.summary.frames_out += 1
        except Exception as e:  # noqa: BLE001
            self._fail(f"render: {type(e).__name__}: {e}")
        finally:
            self.q_results.close(discard=True)
            for closer in (self.output, self.display):
                if closer is not None:
                    try:
                        closer.close()
                    except Exception as e:  # noqa: BLE001
                        self._fail(f"closing {type(closer).__name__}: {e}")

    # --------------------------------------------------------------------- run
    def run(self) -> Summary:
        t0 = time.perf_counter()
        threads = [threading.Thread(target=f, name=f"camera-{n}", daemon=True)
                   for n, f in (("capture", self._capture), ("infer", self._infer), ("render", self._render))]
        for t in threads:
            t.start()
        deadline: Optional[float] = None
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(0.05)  # short joins keep the main thread responsive to signals
            if self._stop.is_set():
                deadline = deadline or time.monotonic() + self.opt.stop_timeout
                if time.monotonic() > deadline:
                    stuck = [t.name for t in threads if t.is_alive()]
                    self.log(f"[camera] stages {stuck} did not stop within {self.opt.stop_timeout:g} s; leaving them")
                    break
        s = self.summary
        s.wall_s = time.perf_counter() - t0
        s.dropped = self.q_frames.dropped + self.q_results.dropped
        s.stages = self.times.stats()
        return s
