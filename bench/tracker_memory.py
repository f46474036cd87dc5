"""Does the video tracker's memory stay flat over a long video?

Tracks two objects through N generated frames (made one at a time, never
held in a list) and prints the process's resident memory and the number of
frame outputs the tracker holds, every ``--every`` frames; on TensorRT also
the GPU memory in use (``cudaMemGetInfo``: every process on the GPU).

    python -m bench.tracker_memory --model-dir DIR [--frames 1000] [--every 100]

DIR is a stock-SAM2 model folder (``python -m export.build --stock-sam2
--no-adapters ...``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Iterator, List, Optional

import numpy as np
import psutil

from runtime.cli.common import run_main
from runtime.core.backends import cuda
from runtime.errors import UsageError
from runtime.sam2.tracker import VideoTracker


def moving_scene(size: int, num_frames: int) -> Iterator[np.ndarray]:
    """``[size,size,3]`` uint8 frames: a disc and a square drifting over noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for t in range(num_frames):
        img = (rng.random((size, size, 3)) * 40 + 60).astype(np.uint8)
        cx = size // 4 + int(size / 8 * np.sin(t / 20))
        img[(yy - size // 3) ** 2 + (xx - cx) ** 2 < (size // 8) ** 2] = (220, 40, 40)
        cy = size // 2 + int(size / 8 * np.cos(t / 15))
        img[(np.abs(yy - cy) < size // 10) & (np.abs(xx - 3 * size // 4) < size // 10)] = (30, 200, 60)
        yield img


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.tracker_memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, required=True, dest="folder", help="stock-SAM2 model folder")
    p.add_argument("--backend", default="auto", help="auto, onnxruntime or tensorrt")
    p.add_argument("--frames", type=int, default=1000, help="video length")
    p.add_argument("--every", type=int, default=100, help="report interval in frames")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for ONNX Runtime (0: default)")
    p.add_argument("--debug", action="store_true", help="on an error, print the full traceback")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    return run_main(lambda: _run(args), debug=args.debug)


def _run(args) -> int:
    if args.frames < 2 or args.every < 1:
        raise UsageError("--frames must be >= 2 and --every >= 1")
    tracker = VideoTracker.load(args.folder, backend=args.backend, threads=args.threads)
    size = tracker.stages.size
    proc = psutil.Process()
    frames = moving_scene(size, args.frames)
    first = next(frames)
    tracker.add_prompt(0, 1, first, points=[[size // 4, size // 3]], labels=[1])
    tracker.add_prompt(0, 2, first, box=[5 * size // 8, 3 * size // 8, 7 * size // 8, 5 * size // 8])
    on_gpu = tracker.backend == "tensorrt"
    print(f"{'frame':>6} {'RSS MiB':>9} {'held outputs':>13} {'frames/s':>9}" + (f" {'GPU MiB':>9}" if on_gpu else ""))
    rss: List[float] = []
    gpu: List[float] = []
    t0 = time.perf_counter()

    def video() -> Iterator[np.ndarray]:
        yield first
        yield from frames

    with tracker:
        for out in tracker.propagate(video(), num_frames=None):
            n = out.frame_idx + 1
            if n % args.every == 0 or n == args.frames:
                rss.append(proc.memory_info().rss / 2 ** 20)
                fps = n / (time.perf_counter() - t0)
                line = f"{n:>6} {rss[-1]:>9.1f} {tracker.stored_frames():>13} {fps:>9.2f}"
                if on_gpu:
                    gpu.append(cuda.device_memory_in_use() / 2 ** 20)
                    line += f" {gpu[-1]:>9.1f}"
                print(line, flush=True)
    if len(rss) >= 2:
        print(f"RSS change from frame {args.every} to frame {args.frames}: {rss[-1] - rss[0]:+.1f} MiB")
    if len(gpu) >= 2:
        print(f"GPU memory in use (all processes) change from frame {args.every} to frame {args.frames}: "
              f"{gpu[-1] - gpu[0]:+.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
