"""CLI: ``python -m runtime camera --model-dir DIR (--ref... | --track PROMPTS) --source SOURCE [options]``.

Two modes on the same loop (threads, dropping, overlay, summary):

* few-shot (default): every frame segmented against references given with
  the options of :mod:`runtime.cli.references` (``--ref [CONCEPT=]IMAGE:MASK``,
  ``--ref-scribble``, ``--ref-box``, ``--ref-points``, ``--refs FOLDER``);
* tracking (``--track``): SAM2 video object tracking of objects prompted on the
  first frame with ``--point X,Y`` / ``--neg-point X,Y`` (clicks), ``--box
  X0,Y0,X1,Y1`` or ``--track-mask PATH``; needs a stock SAM2 model folder
  (``export.build --stock-sam2 --no-adapters``). Each unnamed ``--box`` /
  ``--track-mask`` is a new object and the clicks after it refine it;
  ``NAME=`` groups prompts by name (``--box cup=10,20,80,90 --neg-point cup=40,50``).
  See :mod:`runtime.camera.prompts`.

Examples::

    python -m runtime camera --model-dir engines/tiny-2.1-1024-fp16 --refs refs/ \\
        --source csi://0?width=1280&height=720&fps=30 --display
    python -m runtime camera --model-dir engines/tiny --ref dog=dog.jpg:dog_mask.png \\
        --source clip.mp4 --output out.mp4
    python -m runtime camera --model-dir engines/tiny-2.1-1024-fp16-stock --track \\
        --box 100,80,300,260 --box 400,90,520,300 --point 700,400 --source 0 --display

Keys with ``--display``: q quit, p pause, s snapshot, r reset (few-shot: reload
the references; tracking: forget the memory and prompt again on the next frame).
Exit status (:mod:`runtime.errors`): 0 done; 1 runtime failure (model folder,
inference, writer); 2 bad arguments, references or prompts (also a prompt
outside the first frame), or a model folder of the wrong kind for the mode; 3
source unknown, not opening, or lost for good; 130 / 143 after Ctrl-C /
SIGTERM, which stop the stages, finalise the output video, close the sessions
and print the summary.
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
from runtime.camera.prompts import parse_prompts
from runtime.camera.sources import RetryPolicy, make_source
from runtime.camera.steps import InferenceStep, SegmenterStep, TrackingStep
from runtime.cli.common import HelpFormatter, add_debug, add_edge_options, add_objects_options, run_main
from runtime.cli.references import add_reference_options, any_given, apply_references, collect
from runtime.core.backends import BACKENDS, CPU_INT8_HELP, CPU_INT8_MODES
from runtime.errors import InputError, Sam2EdgeError


class _PromptAction(argparse.Action):
    """Appends ``(kind, value)`` to ``args.prompts``, keeping the order of all prompt options."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = list(getattr(namespace, "prompts", None) or [])
        items.append((self.const, values))
        setattr(namespace, "prompts", items)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m runtime camera",
        description="Few-shot segmentation (--ref.../--refs) or SAM2 object tracking (--track) of a live "
                    "camera, stream, video or image folder.", formatter_class=HelpFormatter)
    p.add_argument("--model-dir", required=True, type=Path, help="model folder made by `python -m export.build`")
    add_reference_options(p)
    p.add_argument("--source", required=True,
                   help="camera index, /dev/videoN, csi://N?width=&height=&fps=&flip=, gst://PIPELINE, "
                        "rtsp:// or http(s):// URL, video file, or image folder")
    t = p.add_argument_group(
        "tracking (--track; a stock SAM2 model folder: export.build --stock-sam2 --no-adapters)",
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
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--threshold", type=float, default=0.5, help="mask probability threshold (default 0.5)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: default)")
    p.add_argument("--cpu-int8", choices=CPU_INT8_MODES, default="auto",
                   help=CPU_INT8_HELP)
    add_edge_options(p)
    add_objects_options(p, "concepts (--track: objects)")
    p.add_argument("--max-frames", type=int, default=None, help="stop after N captured frames")
    p.add_argument("--queue-size", type=int, default=2, help="frames per queue between stages (default 2)")
    p.add_argument("--fps", type=float, default=0.0, help="output video FPS (default: the source's, else 30)")
    p.add_argument("--open-timeout", type=float, default=10.0, help="seconds to wait for a source to open")
    p.add_argument("--reconnect-retries", type=int, default=5, help="reconnect attempts after a live source drops")
    p.add_argument("--reconnect-delay", type=float, default=0.5, help="first backoff delay in s (doubles, max 8 s)")
    p.add_argument("--snapshot-dir", default=".", help="where the s key saves snapshots")
    p.add_argument("--no-hud", action="store_true", help="do not draw FPS and stage times")
    add_debug(p)
    return p


def _check_args(args) -> None:
    """Flag combinations and values (before anything is opened); an InputError names the fault."""
    refs = any_given(args)
    if args.track and refs:
        raise InputError("--ref.../--refs are for few-shot mode; --track takes --point/--neg-point/--box/--track-mask")
    if args.prompts and not args.track:
        raise InputError("--point/--neg-point/--box/--track-mask are tracking prompts: add --track")
    if not args.track and not refs:
        raise InputError("no references: give --ref [CONCEPT=]IMAGE:MASK (or --ref-scribble, --ref-box, "
                         "--ref-points, --refs FOLDER) for few-shot, or --track with --point/--box/--track-mask")
    if not 0.0 < args.threshold < 1.0:
        raise InputError(f"--threshold must be in (0, 1), got {args.threshold}")
    if args.max_frames is not None and args.max_frames < 1:
        raise InputError("--max-frames must be >= 1")
    if args.queue_size < 1:
        raise InputError("--queue-size must be >= 1")
    if args.reconnect_retries < 0 or args.reconnect_delay < 0 or args.open_timeout <= 0:
        raise InputError("--reconnect-retries/--reconnect-delay must be >= 0 and --open-timeout > 0")
    if args.display and sys.platform.startswith("linux") and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise InputError("--display needs a graphical session (DISPLAY is not set); use --output instead")
    if args.output and not Path(args.output).parent.is_dir():
        raise InputError(f"--output {args.output}: the folder {Path(args.output).parent} does not exist")
    if not args.display and not args.output:
        print("note: neither --display nor --output given: frames are processed and only the summary is printed",
              file=sys.stderr)


def _install_signals(loop: CameraLoop, caught: list):
    """SIGINT/SIGTERM -> stop the loop (output finalised); returns a function restoring the old handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = {}

    def handler(signum, frame):
        print(f"\n[camera] {signal.Signals(signum).name}: stopping", file=sys.stderr, flush=True)
        caught.append(signum)
        loop.request_stop(interrupted=True)

    for sig in (signal.SIGINT, signal.SIGTERM):
        old[sig] = signal.signal(sig, handler)

    def restore():
        for sig, h in old.items():
            signal.signal(sig, h)

    return restore


def _load_step(args, refs, objects) -> InferenceStep:
    """The model folder -> the inference step of the mode (the product checks the folder's kind)."""
    if args.track:
        from runtime.sam2.tracker import VideoTracker

        trk = VideoTracker.load(args.model_dir, backend=args.backend, threads=args.threads,
                                cpu_int8=args.cpu_int8, threshold=args.threshold, preprocess=args.preprocess,
                                postprocess=args.postprocess, objects_per_call=args.objects_per_call,
                                pad_objects=args.pad_objects, return_logits=False)
        return TrackingStep(trk, objects)
    from runtime.sam2.fewshot import FewShotSegmenter

    seg = FewShotSegmenter.load(args.model_dir, backend=args.backend, threshold=args.threshold,
                                threads=args.threads, cpu_int8=args.cpu_int8, preprocess=args.preprocess,
                                postprocess=args.postprocess, objects_per_call=args.objects_per_call,
                                pad_objects=args.pad_objects, return_logits=False)

    def reset(s):
        try:
            new = collect(args)
        except InputError as e:
            print(f"[camera] keeping the old references: {e}", file=sys.stderr)
            new = refs
        s.clear()
        apply_references(s, new)

    try:
        apply_references(seg, refs)
    except BaseException:
        seg.close()
        raise
    return SegmenterStep(seg, on_reset=reset)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: _camera(args), debug=args.debug)


def _camera(args) -> int:
    from runtime.core.folder import ModelFolder

    _check_args(args)
    # The folder's manifest (cheap) before opening a source: a wrong folder or kind is exit 2.
    ModelFolder.open(args.model_dir, product="VideoTracker" if args.track else "FewShotSegmenter")
    refs, objects = ([], parse_prompts(args.prompts)) if args.track else (collect(args), [])
    source = make_source(args.source, open_timeout=args.open_timeout, fps=args.fps)
    source.open()
    try:  # after the cheap checks: opening the sessions takes time
        step = _load_step(args, refs, objects)
    except BaseException:
        source.close()
        raise
    caught: list = []
    restore = lambda: None  # noqa: E731
    try:
        print(f"[camera] {step.backend} backend, {step.describe()}, source {source!r}",
              file=sys.stderr, flush=True)
        out = VideoSink(args.output, fps=args.fps or source.fps or 30.0) if args.output else None
        loop = CameraLoop(
            source, step, output=out, display=Display() if args.display else None,
            options=LoopOptions(queue_size=args.queue_size, max_frames=args.max_frames,
                                retry=RetryPolicy(args.reconnect_retries, args.reconnect_delay),
                                hud=not args.no_hud, snapshot_dir=Path(args.snapshot_dir)),
            log=lambda m: print(m, file=sys.stderr, flush=True))
        restore = _install_signals(loop, caught)
        summary = loop.run()
    finally:
        restore()
        step.close()
        source.close()
    print(summary.text(), flush=True)
    if summary.error:
        raise _LoopError(summary.error, summary.exit_code)
    if caught:
        print(f"error: interrupted ({signal.Signals(caught[0]).name})", file=sys.stderr, flush=True)
        return 128 + caught[0]
    return 0


class _LoopError(Sam2EdgeError):
    def __init__(self, msg: str, code: int):
        super().__init__(msg)
        self.exit_code = code or 1


if __name__ == "__main__":
    sys.exit(main())
