"""``python -m bench.objects``: several concepts / objects per frame, batched vs one by one.

For each count N of ``--counts``, in one run:

- **few-shot** (``--fewshot-dir``): N concepts, concept i with ``1 + i % 3``
  references, one frame segmented ``--iterations`` times;
- **tracking** (``--tracker-dir``, a ``--stock-sam2`` folder): N objects
  clicked on frame 0, the odd ones clicked again on frame 2 (so their memory
  banks differ from the others'), then ``--iterations`` frames tracked;

each three ways (:data:`WAYS`): ``one by one`` (``objects_per_call=1``: one
memory-attention and one decoder call per object, as sam2 does; the default
on ONNX Runtime's CPU provider), ``batched`` (``objects_per_call`` = the
folder's maximum, the default on accelerators: objects with the same memory
counts share a call) and ``padded`` (also ``pad_objects=True``: all objects in
one call, the shorter memories padded and masked).

Reports the frame wall time and the memory-attention and decoder time inside
it (median / p90), the calls per frame, and the worst mask IoU and largest
logit difference against one by one (the same masks are expected: IoU >=
0.999). Writes ``OUT.json`` and ``OUT.md``. Torch-free.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from bench.throughput import BenchError, _machine, _versions, summarize

MAX = "the folder's maximum"
WAYS = {"one by one": {"objects_per_call": 1}, "batched": {"objects_per_call": MAX},
        "padded": {"objects_per_call": MAX, "pad_objects": True}}
BASELINE = "one by one"
BATCHED_STAGES = ("memory_attention", "mask_decoder")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.objects", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--fewshot-dir", type=Path, help="a few-shot model folder (export.build)")
    p.add_argument("--tracker-dir", type=Path, help="a --stock-sam2 model folder (export.build)")
    p.add_argument("--counts", default="1,4,8", help="concepts / objects per frame")
    p.add_argument("--iterations", type=int, default=3, help="frames timed per count and way")
    p.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "tensorrt"))
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="output path without suffix")
    return p.parse_args(argv)


def _counts(text: str) -> List[int]:
    try:
        counts = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise BenchError(f"--counts takes positive integers, e.g. 1,4,8; got {text!r}")
    return counts


def scene(size: int, t: int, n: int):
    """Frame ``t`` (``[size,size,3]`` uint8): n discs on a noisy background, disc i moving right."""
    rng = np.random.default_rng(t)
    img = (rng.random((size, size, 3)) * 40 + 60).astype(np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for i, (cy, cx) in enumerate(centres(size, n)):
        img[(yy - cy) ** 2 + (xx - cx - 2 * t) ** 2 < (size // 14) ** 2] = ((60 * i) % 256, 200, 255 - 30 * i)
    return img


def centres(size: int, n: int):
    """Disc centres on a grid covering the frame."""
    side = int(np.ceil(np.sqrt(n)))
    step = size / (side + 1)
    return [(int(step * (1 + i // side)), int(step * (1 + i % side))) for i in range(n)]


def disc(size: int, centre) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < (size // 14) ** 2


def _stage_seconds(product) -> Dict[str, float]:
    return {s: product.session.runners[s].seconds for s in BATCHED_STAGES}


def _timed(product, step, iterations: int):
    """``step(t)`` for t = 1..iterations after one warm-up: wall and batched-stage seconds, outputs."""
    step(0)
    rows: Dict[str, List[float]] = {"frame": [], **{s: [] for s in BATCHED_STAGES}}
    calls0 = dict(product.stage_calls)
    outputs = []
    for t in range(1, iterations + 1):
        s0, w0 = _stage_seconds(product), time.perf_counter()
        outputs.append(step(t))
        rows["frame"].append(time.perf_counter() - w0)
        for s, v in _stage_seconds(product).items():
            rows[s].append(v - s0[s])
    calls = {s: (product.stage_calls[s] - calls0.get(s, 0)) / iterations for s in BATCHED_STAGES}
    return {k: summarize(v) for k, v in rows.items()}, calls, outputs


def fewshot_run(folder: Path, n: int, way: dict, iterations: int, backend: str, threads: int):
    from runtime.sam2.fewshot import FewShotSegmenter

    with FewShotSegmenter.load(folder, backend=backend, threads=threads, **way) as seg:
        size = seg.size
        for i, c in enumerate(centres(size, n)):
            for j in range(1 + i % 3):
                seg.add_reference(scene(size, 10 + j, n), disc(size, (c[0], c[1] + 2 * (10 + j))),
                                  concept=f"c{i}")
        frame = scene(size, 0, n)
        timed, calls, outs = _timed(seg, lambda t: seg.segment(frame), iterations)
        masks = [{c: (r.mask, r.logits) for c, r in res.concepts.items()} for res in outs]
        return timed, calls, masks, seg.objects_per_call


def tracker_run(folder: Path, n: int, way: dict, iterations: int, backend: str, threads: int):
    from runtime.sam2.tracker import VideoTracker

    with VideoTracker.load(folder, backend=backend, threads=threads, **way) as trk:
        size = trk.stages.size
        frames = [scene(size, t, n) for t in range(iterations + 2)]
        for i, (cy, cx) in enumerate(centres(size, n)):
            trk.add_prompt(0, i, frames[0], points=[(cx, cy)], labels=[1])
            if i % 2 and len(frames) > 2:
                trk.add_prompt(2, i, frames[2], points=[(cx + 4, cy)], labels=[1])
        trk.track_frame(0, frames[0])
        timed, calls, outs = _timed(trk, lambda t: trk.track_frame(t + 1, frames[t + 1]), iterations)
        masks = [{i: (o.mask, o.logits) for i, o in out.objects.items()} for out in outs]
        return timed, calls, masks, trk.objects_per_call


def _agreement(a, b) -> Dict[str, float]:
    """Worst mask IoU and largest logit difference between two runs' per-frame outputs."""
    worst_iou, worst_abs = 1.0, 0.0
    for fa, fb in zip(a, b):
        for k, (mask, logits) in fa.items():
            union = np.logical_or(mask, fb[k][0]).sum()
            worst_iou = min(worst_iou, 1.0 if union == 0 else float(np.logical_and(mask, fb[k][0]).sum() / union))
            worst_abs = max(worst_abs, float(np.abs(logits - fb[k][1]).max()))
    return {"min_iou": worst_iou, "max_abs_logits": worst_abs}


def run(args) -> dict:
    from runtime.core.folder import ModelFolder

    counts = _counts(args.counts)
    if args.iterations < 1:
        raise BenchError("--iterations must be >= 1")
    flows = [(name, fn, folder) for name, fn, folder in (("few-shot concepts", fewshot_run, args.fewshot_dir),
                                                          ("tracked objects", tracker_run, args.tracker_dir))
             if folder is not None]
    if not flows:
        raise BenchError("give --fewshot-dir, --tracker-dir or both")
    rows = []
    for name, fn, folder in flows:
        for n in counts:
            row = {"flow": name, "folder": str(folder), "count": n, "ways": {}}
            outs = {}
            limit = ModelFolder.open(folder).manifest.axis_max("objects")
            for way, kwargs in WAYS.items():
                kwargs = {k: limit if v == MAX else v for k, v in kwargs.items()}
                timed, calls, outs[way], used = fn(folder, n, kwargs, args.iterations, args.backend, args.threads)
                row["ways"][way] = {"objects_per_call": used, "calls_per_frame": calls, **timed}
            base = row["ways"][BASELINE]["frame"]["median"]
            for way, w in row["ways"].items():
                w["speedup"] = base / w["frame"]["median"]
                w["agreement"] = _agreement(outs[BASELINE], outs[way])
            rows.append(row)
            print(f"[{name}] {n}: " + ", ".join(
                f"{way} {w['frame']['median'] * 1e3:.0f} ms ({w['speedup']:.2f}x, min IoU "
                f"{w['agreement']['min_iou']:.6f})" for way, w in row["ways"].items()), flush=True)
    return {"command": "python -m bench.objects " + " ".join(shlex.quote(a) for a in args.argv),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": _machine(), "versions": _versions(),
            "backend": args.backend, "iterations": args.iterations, "threads": args.threads, "rows": rows}


def _ms(s) -> str:
    return f"{s['median'] * 1e3:.0f} / {s['p90'] * 1e3:.0f}"


def markdown(rec: dict) -> str:
    m = rec["machine"]
    lines = ["# Several concepts / objects per frame: one by one, batched, padded", "",
             f"{m['cpu']}, {m['cores']} cores; backend {rec['backend']} (onnxruntime "
             f"{rec['versions'].get('onnxruntime')}), {rec['threads'] or 'all'} threads, {rec['iterations']} frames per row after a warm-up. "
             "Milliseconds per frame, median / p90; memory attention and decoder are the time inside "
             "their run calls.", "",
             "| flow | N | way | calls/frame (attn, dec) | frame | memory attention | mask decoder "
             f"| speed-up vs {BASELINE} | min IoU vs {BASELINE} | max abs logit diff |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rec["rows"]:
        for way, w in r["ways"].items():
            c, a = w["calls_per_frame"], w["agreement"]
            lines.append(f"| {r['flow']} | {r['count']} | {way} | {c['memory_attention']:g}, "
                         f"{c['mask_decoder']:g} | {_ms(w['frame'])} | {_ms(w['memory_attention'])} | "
                         f"{_ms(w['mask_decoder'])} | {w['speedup']:.2f}x | {a['min_iou']:.6f} | "
                         f"{a['max_abs_logits']:.1e} |")
    folders = sorted({r["folder"] for r in rec["rows"]})
    lines += ["", "Folders: " + ", ".join(f"`{f}`" for f in folders), "", f"Command: `{rec['command']}`", ""]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    from bench.report import parsed_args, run_report

    return run_report(parsed_args(parse_args, argv), run, markdown)


if __name__ == "__main__":
    sys.exit(main())
