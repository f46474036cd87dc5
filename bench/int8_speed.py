"""INT8 (Q/DQ ONNX) vs FP32 ONNX Runtime CPU speed per stage, on this machine (not a test).

    python bench/int8_speed.py --model-dir DIR [--int8-dir DIR/calib_work] [--runs 10] [--threads 0]

Uses the recorded calibration inputs (DIR/calib_cache, made by
``python -m calib.report``) and the ``<stage>.int8.onnx`` files found in
``--int8-dir`` (default: the folder's calib_work, then the folder itself).
Prints median ms per call and the INT8/FP32 time ratio (< 1: INT8 faster).
CPU INT8 speed says little about TensorRT INT8 on a GPU; it is a sanity number.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _time(runner, feeds, runs):
    runner.infer(feeds)  # warm-up
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        runner.infer(feeds)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, required=True, dest="folder")
    p.add_argument("--int8-dir", type=Path)
    p.add_argument("--cache", type=Path, help="recorded inputs (default MODEL_DIR/calib_cache)")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)

    from calib.record import MARKER, _load_samples
    from runtime.core.backends.onnxruntime import OnnxRuntimeStageRunner
    from runtime.core.folder import ModelFolder
    from runtime.sam2.spec import STAGES

    folder = ModelFolder.read(a.folder)
    specs = folder.specs
    cache = a.cache or a.folder / "calib_cache"
    if not (cache / MARKER).is_file():
        print(f"error: no complete recording in {cache}; run python -m calib.report first", file=sys.stderr)
        return 2
    dirs = [a.int8_dir] if a.int8_dir else [a.folder / "calib_work", a.folder]
    print(f"{'stage':<18} {'fp32 ms':>9} {'int8 ms':>9} {'int8/fp32':>10}")
    for s in STAGES:
        q = next((d / f"{s}.int8.onnx" for d in dirs if (d / f"{s}.int8.onnx").is_file()), None)
        if q is None:
            print(f"{s:<18} (no {s}.int8.onnx)")
            continue
        feeds = _load_samples(cache / f"{s}.npz")[-1]
        f32 = OnnxRuntimeStageRunner(specs[s], a.folder / folder.file_record(s, "fp32").file,
                                     a.threads, ["CPUExecutionProvider"]).activate()
        i8 = OnnxRuntimeStageRunner(specs[s], q, a.threads, ["CPUExecutionProvider"]).activate()
        t32, t8 = _time(f32, feeds, a.runs), _time(i8, feeds, a.runs)
        print(f"{s:<18} {t32 * 1e3:>9.1f} {t8 * 1e3:>9.1f} {t8 / t32:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
