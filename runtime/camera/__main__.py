"""CLI: ``python -m runtime.camera --engines DIR (--refs REFS | --track PROMPTS) --source SOURCE [options]``.

Two modes on the same loop (threads, dropping, overlay, summary):

* few-shot (default): every frame segmented against reference images + masks
  (engines from ``export.build``, with or without adapters);
* tracking (``--track``): SAM2 video object tracking of objects prompted on the
  first frame with ``--point X,Y`` / ``--neg-point X,Y`` (clicks), ``--box
  X0,Y0,X1,Y1`` or ``--track-mask PATH``; needs stock SAM2 engines
  (``export.build --stock-sam2 --no-adapters``). Each unnamed ``--box`` /
  ``--track-mask`` is a new object and the clicks after it refine it;
  ``NAME=`` groups prompts by name (``--box cup=10,20,80,90 --neg-point cup=40,50``).
  See :mod:`runtime.camera.prompts`.

Examples::

    python -m runtime.camera --engines engines/tiny-2.1-1024-fp16 --refs refs/ \\
        --source csi://0?width=1280&height=720&fps=30 --display
    python -m runtime.camera --engines engines/tiny --ref dog:dog.jpg:dog_mask.png \\
        --source clip.mp4 --output out.mp4
    python -m runtime.camera --engines engines/tiny-2.1-1024-fp16-stock --track \\
        --box 100,80,300,260 --box 400,90,520,300 --point 700,400 --source 0 --display

Keys with ``--display``: q quit, p pause, s snapshot, r reset (few-shot: reload
the references; tracking: forget the memory and prompt again on the next frame).
Exit status: 0 done; 1 runtime failure (engines, inference, writer); 2 bad
arguments, references or prompts (also a prompt outside the first frame), or
engines of the wrong kind for the mode; 3 source unknown, not opening, or lost for good.
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

from runtime.backends import CPU_INT8_HELP, CPU_INT8_MODES
from runtime.camera.loop import CameraLoop, Display, LoopOptions, VideoSink
from runtime.camera.prompts import PromptError, parse_prompts
from runtime.camera.references import ReferenceError, apply_references, collect_references
from runtime.camera.sources import RetryPolicy, SourceError, make_source
from runtime.camera.steps import InferenceStep, SegmenterStep, TrackingStep

EXIT_RUNTIME, EXIT_INPUT, EXIT_SOURCE = 1, 2, 3
TRACKING_KIND = "sam2"  # manifest["model"]["kind"] of stock SAM2 engines (export.build --stock-sam2)


class _PromptAction(argparse.Action):
    """Appends ``(kind, value)`` to ``args.prompts``, keeping the order of all prompt options."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = list(getattr(namespace, "prompts", None) or [])
        items.append((self.const, values))
        setattr(namespace, "prompts", items)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m runtime.camera",
        description="Few-shot segmentation (--refs/--ref) or SAM2 object tracking (--track) of a live camera, "
                    "stream, video or image folder.")
    p.add_argument("--engines", required=True, help="engines folder made by `python -m export.build`")
    p.add_argument("--refs", help="references folder: one subfolder per concept with NAME.jpg|png + NAME_mask.png")
    p.add_argument("--ref", action="append", default=[], metavar="CONCEPT:IMG:MASK",
                   help="one reference (repeatable; adds to --refs)")
    p.add_argument("--source", required=True,
                   help="camera index, /dev/videoN, csi://N?width=&height=&fps=&flip=, gst://PIPELINE, "
                        "rtsp:// or http(s):// URL, video file, or image folder")
    t = p.add_argument_group(
        "tracking (--track; stock SAM2 engines: export.build --stock-sam2 --no-adapters)",
        "Prompts on the first frame, in its pixels. Each unnamed --box / --track-mask is a new object and "
        "the clicks after it refine it (clicks before any box form one object; a mask takes no clicks). "
        "NAME=VALUE names the object: "
        "prompts with the same name are one object (--box cup=10,20,80,90 --neg-point cup=40,50).")
    t.add_argument("--track", action="store_true", help="track objects prompted on the first frame (no references)")
    p.set_defaults(prompts=[])
    t.add_argument("--point", action=_PromptAction, const="point", metavar="[NAME=]X,Y",
                   help="foreground click (repeatable)")
    t.add_argument("--neg-point", action=_PromptAction, const="neg-point", metavar="[NAME=]X,Y",
                   help="background click (repeatable)")
    t.add_argument("--box", action=_PromptAction, const="box", metavar="[NAME=]X0,Y0,X1,Y1",
                   help="box around an object (repeatable: one object each)")
    t.add_argument("--track-mask", action=_PromptAction, const="mask", metavar="[NAME=]PATH",
                   help="mask image of an object on the first frame, the frame's size (repeatable)")
    p.add_argument("--display", action="store_true", help="show a window (cv2.imshow)")
    p.add_argument("--output", help="write the rendered video here (mp4v)")
    p.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "tensorrt"))
    p.add_argument("--threshold", type=float, default=0.5, help="mask probability threshold (default 0.5)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: default)")
    p.add_argument("--cpu-int8", choices=CPU_INT8_MODES, default="auto",
                   help=CPU_INT8_HELP)
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
    if args.track and (args.refs or args.ref):
        return "--refs/--ref are for few-shot mode; --track takes --point/--neg-point/--box/--track-mask"
    if args.prompts and not args.track:
        return "--point/--neg-point/--box/--track-mask are tracking prompts: add --track"
    if not args.track and not (args.refs or args.ref):
        return ("no references: give --refs FOLDER and/or --ref CONCEPT:IMAGE:MASK (few-shot), "
                "or --track with --point/--box/--track-mask (SAM2 tracking)")
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


def _engine_kind(engines: str) -> Optional[str]:
    """``manifest["model"]["kind"]`` of an engines folder (None if unreadable: the loader says why)."""
    import json

    from runtime.manifest import MANIFEST_NAME

    try:
        return json.loads((Path(engines) / MANIFEST_NAME).read_text())["model"]["kind"]
    except Exception:  # noqa: BLE001 - a missing / broken manifest is reported by the loader
        return None


def _check_kind(args) -> Optional[str]:
    kind = _engine_kind(args.engines)
    if args.track and kind is not None and kind != TRACKING_KIND:
        return (f"--track needs stock SAM2 engines (model kind {TRACKING_KIND!r}), but {args.engines} holds a "
                f"{kind!r} model; build them with `python -m export.build --stock-sam2 --no-adapters ...`")
    return None


def _load_step(args, refs, objects) -> InferenceStep:
    """Engines -> the inference step of the mode (raises on engine errors)."""
    from runtime.preprocess import threshold_logit

    if args.track:
        from runtime.tracker import VideoTracker

        trk = VideoTracker.load(args.engines, backend=args.backend, threads=args.threads,
                                cpu_int8=args.cpu_int8,
                                mask_threshold=threshold_logit(args.threshold))
        return TrackingStep(trk, objects)
    from runtime.pipeline import FewShotSegmenter

    seg = FewShotSegmenter.load(args.engines, backend=args.backend, threshold=args.threshold,
                                threads=args.threads, cpu_int8=args.cpu_int8)

    def reset(s):
        try:
            new = collect_references(args.refs, args.ref)
        except ReferenceError as e:
            print(f"[camera] keeping the old references: {e}", file=sys.stderr)
            new = refs
        s.clear()
        apply_references(s, new)

    return SegmenterStep(seg, on_reset=reset)


def _close_step(step: InferenceStep) -> None:
    model = step.tracker if isinstance(step, TrackingStep) else step.segmenter
    model.close()


def _backend(step: InferenceStep) -> str:
    return step.tracker.engines.backend if isinstance(step, TrackingStep) else step.segmenter.backend


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    msg = _check_args(args)
    if msg:
        _err(msg)
        return EXIT_INPUT
    refs, objects = [], []
    try:
        if args.track:
            objects = parse_prompts(args.prompts)
        else:
            refs = collect_references(args.refs, args.ref)
    except (ReferenceError, PromptError) as e:
        _err(str(e))
        return EXIT_INPUT
    msg = _check_kind(args)
    if msg:
        _err(msg)
        return EXIT_INPUT
    try:
        source = make_source(args.source, open_timeout=args.open_timeout, fps=args.fps)
        source.open()
    except SourceError as e:
        _err(str(e))
        return EXIT_SOURCE

    try:  # after the cheap checks: loading engines takes time
        step = _load_step(args, refs, objects)
    except Exception as e:  # noqa: BLE001 - missing backend, bad manifest, ...: one clear line
        source.close()
        _err(f"cannot load engines from {args.engines}: {type(e).__name__}: {e}")
        return EXIT_RUNTIME

    summary = None
    restore = lambda: None  # noqa: E731
    try:
        if isinstance(step, SegmenterStep):
            try:
                apply_references(step.segmenter, refs)
            except ReferenceError as e:
                _err(str(e))
                return EXIT_INPUT
        print(f"[camera] {_backend(step)} backend, {step.describe()}, source {source!r}",
              file=sys.stderr, flush=True)
        out = VideoSink(args.output, fps=args.fps or source.fps or 30.0) if args.output else None
        loop = CameraLoop(
            source, step, output=out, display=Display() if args.display else None,
            options=LoopOptions(queue_size=args.queue_size, max_frames=args.max_frames,
                                retry=RetryPolicy(args.reconnect_retries, args.reconnect_delay),
                                hud=not args.no_hud, snapshot_dir=Path(args.snapshot_dir)),
            log=lambda m: print(m, file=sys.stderr, flush=True))
        restore = _install_signals(loop)
        summary = loop.run()
    finally:
        restore()
        _close_step(step)
        source.close()
    print(summary.text(), flush=True)
    if summary.error:
        _err(summary.error)
        if summary.bad_input:
            return EXIT_INPUT
        return EXIT_SOURCE if summary.error.startswith("source") else EXIT_RUNTIME
    return 0


if __name__ == "__main__":
    sys.exit(main())
