"""ONNX Runtime CPU speed of a folder's reduced-precision files vs its FP32 files, per stage (not a test).

    python -m bench.variant_speed --model-dir DIR [--variants fp16,int8,cpu-int8] [--runs 10] [--threads 0]

Feeds each stage the last input recorded by the build's calibration run
(``DIR/calib_cache``, written by ``export.build --precision fp16|int8``) and
times FP32 and each variant file the stage has, interleaved call by call
(shared machines drift). Prints median ms per call and the variant/FP32 ratio
(> 1: slower than FP32). FP16 and Q/DQ INT8 files are for TensorRT and GPU
providers: ONNX Runtime's CPU kernels are FP32, so on the CPU these numbers
are their cost, not their speed on a device.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path


def _interleaved(runners, feeds, runs):
    """Median seconds per call of each runner, calls interleaved (one warm-up each)."""
    times = {k: [] for k in runners}
    for r in runners.values():
        r.infer(feeds)
    for _ in range(runs):
        for k, r in runners.items():
            t = time.perf_counter()
            r.infer(feeds)
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.variant_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, required=True, dest="folder")
    p.add_argument("--variants", default="fp16,int8,cpu-int8", help="comma-separated variants to time")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)

    from calib.record import MARKER, StoredSamples
    from runtime.core.backends.onnxruntime import OnnxRuntimeStageRunner
    from runtime.core.folder import ModelFolder

    folder = ModelFolder.read(a.folder)
    cache = a.folder / "calib_cache"
    if not (cache / MARKER).is_file():
        print(f"error: no complete recording in {cache}; build with --precision fp16 or int8", file=sys.stderr)
        return 2
    variants = [v for v in a.variants.split(",") if v]
    print(f"{'stage':<18} {'variant':<9} {'fp32 ms':>9} {'variant ms':>11} {'ratio':>7}")
    for s, spec in folder.specs.items():
        have = [v for v in variants if v in folder.stage(s).files]
        if not have:
            continue
        feeds = StoredSamples(cache / f"{s}.npz")[-1]
        runners = {v: OnnxRuntimeStageRunner(spec, a.folder / folder.file_record(s, v).file, a.threads,
                                             ["CPUExecutionProvider"]).activate() for v in ["fp32", *have]}
        t = _interleaved(runners, feeds, a.runs)
        for v in have:
            print(f"{s:<18} {v:<9} {t['fp32'] * 1e3:>9.1f} {t[v] * 1e3:>11.1f} {t[v] / t['fp32']:>7.2f}")
        for r in runners.values():
            r.deactivate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
