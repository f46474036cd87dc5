"""CLI: ``python -m runtime.camera --engines DIR --refs REFS --source SOURCE [options]``.

Examples::

    python -m runtime.camera --engines engines/tiny-2.1-1024-fp16 --refs refs/ \\
        --source csi://0?width=1280&height=720&fps=30 --display
    python -m runtime.camera --engines engines/tiny --ref dog:dog.jpg:dog_mask.png \\
        --source clip.mp4 --output out.mp4

Keys with ``--display``: q quit, p pause, s snapshot, r reload + reset references.
Exit status: 0 done; 1 runtime failure (engines, inference, writer); 2 bad
arguments or references; 3 source unknown, not opening, or lost for good.
Ctrl-C / SIGTERM stop the stages, close the writer and engines, print the summary.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import List, Optional

from runtime.camera.loop import CameraLoop, Display, LoopOptions, VideoSink
from runtime.camera.references import ReferenceError, apply_references, collect_references
from runtime.camera.sources import RetryPolicy, SourceError, make_source

EXIT_RUNTIME, EXIT_INPUT, EXIT_SOURCE = 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runtime.camera",
                                description="Few-shot segmentation of a live camera, stream, video or image folder.")
    p.add_argument("--engines", required=True, help="engines folder made by `python -m export.build`")
    p.add_argument("--refs", help="references folder: one subfolder per concept with NAME.jpg|png + NAME_mask.png")
    p.add_argument("--ref", action="append", default=[], metavar="CONCEPT:IMG:MASK",
                   help="one reference (repeatable; adds to --refs)")
    p.add_argument("--source", required=True,
                   help="camera index, /dev/videoN, csi://N?width=&height=&fps=&flip=, gst://PIPELINE, "
                        "rtsp:// or http(s):// URL, video file, or image folder")
    p.add_argument("--display", action="store_true", help="show a window (cv2.imshow)")
    p.add_argument("--output", help="write the rendered video here (mp4v)")
    p.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "tensorrt"))
    p.add_argument("--threshold", type=float, default=0.5, help="mask probability threshold (default 0.5)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: default)")
    p.add_argument("--max-frames", type=int, default=None, help="stop after N captured frames")
    p.add_argument("--queue-size", type=int, default=2, help="frames per queue between stages (default 2)")
    p.add_argument("--fps", type=float, default=0.0, help="output video FPS (default: the source's, else 30)")
    p.add_argument("--open-timeout", type=float, default=10.0, help="seconds to wait for a source to open")
    p.add_argument("--reconnect-retries", type=int, default=5, help="reconnect attempts after a live source drops")
    p.add_argument("--reconnect-delay", type=float, default=0.5, help="first backoff delay in s (doubles, max 8 s)")
    p.add_argument("--snapshot-dir", default=".", help="where the s key saves snapshots")
    p.add_argument("--no-hud", action="store_true", help="do not draw FPS and stage times")
    return p


def _err(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr, flush=True)


def _check_args(args) -> Optional[str]:
    if not Path(args.engines).is_dir():
        return f"engines folder {args.engines} does not exist"
    if not 0.0 < args.threshold < 1.0:
        return f"--threshold must be in (0, 1), got {args.threshold}"
    if args.max_frames is not None and args.max_frames < 1:
        return "--max-frames must be >= 1"
    if args.queue_size < 1:
        return "--queue-size must be >= 1"
    if args.reconnect_retries < 0 or args.reconnect_delay < 0 or args.open_timeout <= 0:
        return "--reconnect-retries/--reconnect-delay must be >= 0 and --open-timeout > 0"
    if not args.display and not args.output:
        print("note: neither --display nor --output given: frames are processed and only the summary is printed",
              file=sys.stderr)
    if args.display and sys.platform.startswith("linux") and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "--display needs a graphical session (DISPLAY is not set); use --output instead"
    return None


def _install_signals(loop: CameraLoop):
    """SIGINT/SIGTERM -> stop the loop; returns a function restoring the old handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = {}

    def handler(signum, frame):
        print(f"\n[camera] {signal.Signals(signum).name}: stopping", file=sys.stderr, flush=True)
        loop.request_stop(interrupted=True)

    for sig in (signal.SIGINT, signal.SIGTERM):
        old[sig] = signal.signal(sig, handler)

    def restore():
        for sig, h in old.items():
            signal.signal(sig, h)

    return restore


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    msg = _check_args(args)
    if msg:
        _err(msg)
        return EXIT_INPUT
    try:
        refs = collect_references(args.refs, args.ref)
    except ReferenceError as e:
        _err(str(e))
        return EXIT_INPUT
    try:
        source = make_source(args.source, open_timeout=args.open_timeout, fps=args.fps)
        source.open()
    except SourceError as e:
        _err(str(e))
        return EXIT_SOURCE

    from runtime.pipeline import FewShotSegmenter  # after the cheap checks: loading engines takes time

    try:
        seg = FewShotSegmenter.load(args.engines, backend=args.backend, threshold=args.threshold,
                                    threads=args.threads)
    except Exception as e:  # noqa: BLE001 - missing backend, bad manifest, ...: one clear line
        source.close()
        _err(f"cannot load engines from {args.engines}: {type(e).__name__}: {e}")
        return EXIT_RUNTIME

    summary = None
    restore = lambda: None  # noqa: E731
    try:
        try:
            apply_references(seg, refs)
        except ReferenceError as e:
            _err(str(e))
            return EXIT_INPUT
        print(f"[camera] {seg.backend} backend, concepts {seg.concepts} "
              f"({sum(seg.num_references(c) for c in seg.concepts)} references), source {source!r}",
              file=sys.stderr, flush=True)

        def reset(s):
            try:
                new = collect_references(args.refs, args.ref)
            except ReferenceError as e:
                print(f"[camera] keeping the old references: {e}", file=sys.stderr)
                new = refs
            s.clear()
            apply_references(s, new)

        out = VideoSink(args.output, fps=args.fps or source.fps or 30.0) if args.output else None
        loop = CameraLoop(
            source, seg, output=out, display=Display() if args.display else None,
            options=LoopOptions(queue_size=args.queue_size, max_frames=args.max_frames,
                                retry=RetryPolicy(args.reconnect_retries, args.reconnect_delay),
                                hud=not args.no_hud, snapshot_dir=Path(args.snapshot_dir)),
            on_reset=reset, log=lambda m: print(m, file=sys.stderr, flush=True))
        restore = _install_signals(loop)
        summary = loop.run()
    finally:
        restore()
        seg.close()
        source.close()
    print(summary.text(), flush=True)
    if summary.error:
        _err(summary.error)
        return EXIT_SOURCE if summary.error.startswith("source") else EXIT_RUNTIME
    return 0


if __name__ == "__main__":
    sys.exit(main())
