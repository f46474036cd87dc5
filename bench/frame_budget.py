"""``python -m bench.frame_budget``: what the host spends per frame around the engines.

On a GPU the engines take milliseconds, so the frame rate a user sees is set
by the host work around them. For a few-shot model folder this measures, in
one run:

- **host work per frame**: ``FewShotSegmenter.segment`` wall time minus the
  time inside the backend's run calls (``EngineSession.engine_seconds``), at each
  ``--sizes`` frame size, 1 concept; median / p90, with its pre-processing and
  post-processing parts, for three placements of the edge graphs
  (:data:`VARIANTS`): both on the host (``preprocess="host"``,
  ``postprocess="host"``), the preprocess graph on the backend and the logits
  upsampled on the host (``pre``), both graphs on the backend (``backend``;
  the graphs' own time on the backend is reported with it, masks only asked
  for, as the camera loop does). ``before``: host resize and the mask logits
  upsampled by the NumPy tap loop (:func:`runtime.core.resize.resize_bilinear`,
  the path before :func:`~runtime.core.resize.upsample_bilinear`), in the
  same run;
- **overlay**: :func:`runtime.camera.overlay.draw_masks` on noisy and smooth
  masks at each size, against the previous drawing (boolean-indexed blend +
  ``findContours``/``drawContours``, reproduced here as the baseline);
- **host memory per ONNX Runtime memory mode** (``arena`` / ``shared`` /
  ``off``) and per file set (``cpu-fused``: the image encoder and memory
  attention from their fused-attention files, what ONNX Runtime's CPU
  provider runs by default; ``fp32``: every stage from its FP32 file): a
  fresh process each, ``--refs`` references added, then frames segmented;
  peak RSS and the steady frame time.

Writes ``OUT.json`` and ``OUT.md``. Torch-free.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from bench.throughput import BenchError, _machine, _versions, frame_sizes, summarize
from runtime.sam2.spec import EDGE_STAGES

MEMORY_MODES = ("arena", "shared", "off")
FILE_SETS = ("cpu-fused", "fp32")  # the folder's default CPU files, or its FP32 files only
# Where the edge graphs run, per variant (FewShotSegmenter.load options).
VARIANTS = {"host": {"preprocess": "host", "postprocess": "host"},
            "pre": {"preprocess": "backend", "postprocess": "host"},
            "backend": {"preprocess": "backend", "postprocess": "backend", "return_logits": False}}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.frame_budget", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model-dir", type=Path, required=True, help="a few-shot model folder (export.build)")
    p.add_argument("--sizes", default="640x480,1280x720,1920x1080", help="frame sizes, WxH")
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--refs", type=int, default=5, help="references in the memory runs")
    p.add_argument("--memory", default=",".join(MEMORY_MODES), help="ONNX Runtime memory modes to measure")
    p.add_argument("--files", default=",".join(FILE_SETS),
                   help="file sets of the memory runs: cpu-fused (the CPU provider's default: fused attention "
                        "where the folder has it), fp32 (every stage from its FP32 file)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="output path without suffix")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--memory-files", default="cpu-fused", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def scene(hw, seed: int = 0):
    """A textured frame with a disc (smooth mask) and a noisy mask of the same frame size."""
    rng = np.random.default_rng(seed)
    h, w = hw
    yy, xx = np.mgrid[:h, :w]
    smooth = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 4) ** 2
    frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    frame[smooth] //= 2
    noisy = smooth ^ (rng.random((h, w)) < 0.2)
    return frame, smooth, noisy


def host_work(seg, frame, iterations: int) -> Dict[str, dict]:
    """Per frame: wall, engine and host seconds of ``segment``, and its pre/post-processing timings."""
    seg.segment(frame)  # warm-up
    graphs = [r for name, r in seg.session.runners.items() if name in EDGE_STAGES]
    rows: Dict[str, List[float]] = {"wall": [], "engine": [], "host": [], "preprocess": [], "postprocess": [],
                                    "graph": []}
    for _ in range(iterations):
        e0, g0, t = seg.session.engine_seconds, sum(g.seconds for g in graphs), time.perf_counter()
        res = seg.segment(frame)
        wall, eng = time.perf_counter() - t, seg.session.engine_seconds - e0
        rows["wall"].append(wall)
        rows["engine"].append(eng)
        rows["host"].append(wall - eng)
        rows["graph"].append(sum(g.seconds for g in graphs) - g0)
        rows["preprocess"].append(res.timings["preprocess"])
        rows["postprocess"].append(res.timings["postprocess"])
    return {k: summarize(v) for k, v in rows.items()}


def contour_overlay(frame, mask, colour, alpha: float = 0.45):
    """The overlay before: boolean-indexed blend over the frame, external contours drawn (baseline)."""
    import cv2

    m = mask.astype(bool)
    frame[m] = (frame[m].astype(np.float32) * (1 - alpha) + np.asarray(colour, np.float32) * alpha).astype(np.uint8)
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(frame, contours, -1, colour, 2, cv2.LINE_AA)
    return frame


def overlay_times(hw, iterations: int) -> Dict[str, dict]:
    from runtime.camera.overlay import draw_masks

    frame, smooth, noisy = scene(hw)
    out = {}
    for name, mask in (("smooth", smooth), ("noisy", noisy)):
        for which, fn in (("before", lambda f, m=mask: contour_overlay(f, m, (0, 200, 255))),
                          ("after", lambda f, m=mask: draw_masks(f, {"a": m}, {"a": (0, 200, 255)},
                                                                 labels=False))):
            samples = []
            for _ in range(iterations + 1):
                f = frame.copy()
                t = time.perf_counter()
                fn(f)
                samples.append(time.perf_counter() - t)
            out[f"{name} {which}"] = summarize(samples[1:])
    return out


def memory_child(folder: Path, mode: str, refs: int, iterations: int, threads: int, files: str = "cpu-fused") -> dict:
    """In a fresh process: open with ``memory=mode`` and the ``files`` set, add ``refs`` references,
    segment frames."""
    from bench.rss import RssSampler, rss_reader
    from runtime.core.folder import ModelFolder
    from runtime.core.session import EngineSession
    from runtime.sam2.fewshot import FewShotSegmenter

    rss = rss_reader()
    variants = {s: "fp32" for s in ModelFolder.open(folder).specs} if files == "fp32" else None
    # Sampled, not ru_maxrss: on Linux a child's ru_maxrss starts from the parent's RSS at fork.
    with RssSampler() as peak:
        session = EngineSession.open(folder, product="FewShotSegmenter", backend="onnxruntime", threads=threads,
                                     providers=["CPUExecutionProvider"], memory=mode, variants=variants)
        seg = FewShotSegmenter(session)
        size = seg.size
        for i in range(refs):
            img, mask, _ = scene((size, size), seed=i + 1)
            seg.add_reference(img, mask, concept="thing")
        frame = scene((720, 1280), seed=99)[0]
        seg.segment(frame)
        times = []
        for _ in range(iterations):
            t = time.perf_counter()
            seg.segment(frame)
            times.append(time.perf_counter() - t)
        steady = rss() / 2 ** 20  # the session open, its references held
        stage_files = session.stage_files
        session.close()
    return {"mode": mode, "files": files, "stage_files": stage_files, "refs": refs, "rss_mb": steady,
            "peak_rss_mb": peak.peak_mb, "frame": summarize(times)}


def run(args) -> dict:
    from runtime.sam2 import stages
    from runtime.core.resize import resize_bilinear
    from runtime.sam2.fewshot import FewShotSegmenter

    sizes = frame_sizes(args.sizes, "--sizes")
    modes = [m for m in args.memory.split(",") if m]
    file_sets = [f for f in args.files.split(",") if f]
    bad = [m for m in modes if m not in MEMORY_MODES] + [f for f in file_sets if f not in FILE_SETS]
    if bad or args.iterations < 1 or args.refs < 1:
        raise BenchError(f"--memory takes {', '.join(MEMORY_MODES)}, --files {', '.join(FILE_SETS)}; "
                         "--iterations and --refs must be >= 1")
    segs = {}
    for name, options in VARIANTS.items():
        segs[name] = FewShotSegmenter.load(args.model_dir, backend="onnxruntime", threads=args.threads, **options)
        img, mask, _ = scene((segs[name].size, segs[name].size), seed=1)
        segs[name].add_reference(img, mask, concept="thing")
    seg = segs["host"]
    host = {}
    upsample = stages.logits_to_image
    for hw in sizes:
        frame = scene(hw)[0]
        key = f"{hw[1]}x{hw[0]}"
        host[key] = {name: host_work(s, frame, args.iterations) for name, s in segs.items()}
        stages.logits_to_image = lambda low, shape: resize_bilinear(low, shape, antialias=False)
        try:
            host[key]["before"] = host_work(seg, frame, args.iterations)
        finally:
            stages.logits_to_image = upsample
        ms = {k: v["host"]["median"] * 1e3 for k, v in host[key].items()}
        print(f"[host] {key}: {ms['backend']:.1f} ms with both edge graphs on the backend, {ms['pre']:.1f} ms "
              f"with the preprocess graph only, {ms['host']:.1f} ms all on the host (before {ms['before']:.1f} ms)",
              flush=True)
    for s in segs.values():
        s.close()
    overlay = {f"{hw[1]}x{hw[0]}": overlay_times(hw, max(args.iterations, 10)) for hw in sizes}
    memory = []
    for files in file_sets:
        for mode in modes:
            cmd = [sys.executable, "-m", "bench.frame_budget", "--model-dir", str(args.model_dir), "--out", "-",
                   "--memory-child", mode, "--memory-files", files, "--refs", str(args.refs),
                   "--iterations", str(args.iterations), "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise BenchError(f"memory run {mode!r} ({files} files) failed: {proc.stderr[-2000:]}")
            memory.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"[memory] {mode}, {files} files: peak RSS {memory[-1]['peak_rss_mb']:.0f} MB, "
                  f"frame {memory[-1]['frame']['median'] * 1e3:.0f} ms", flush=True)
    return {"command": "python -m bench.frame_budget " + " ".join(shlex.quote(a) for a in args.argv),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": _machine(), "versions": _versions(),
            "folder": str(args.model_dir), "image_size": seg.size, "host": host, "overlay": overlay,
            "memory": memory}


def _ms(s) -> str:
    return f"{s['median'] * 1e3:.1f} / {s['p90'] * 1e3:.1f}"


def markdown(rec: dict) -> str:
    lines = [f"# Frame budget: {rec['folder']} ({rec['image_size']} px)", "",
             f"{rec['machine']['cpu']}, {rec['machine']['cores']} cores; onnxruntime "
             f"{rec['versions'].get('onnxruntime')}. Milliseconds, median / p90.", "",
             "## Host work per frame (segment wall minus time in the backend's run calls; 1 concept)", "",
             "Edge graphs on the backend: frames become the model input in the preprocess graph and the "
             "logits frame-size masks in the postprocess graph (masks only; the graphs' own time is in the "
             "engines' time, shown apart). Preprocess graph only: the logits upsampled on the host (OpenCV). "
             "All on the host: NumPy resize, OpenCV upsample. Before: host resize and the NumPy tap loop "
             "for the logits.", "",
             "| frame | host work, edge graphs on the backend | the graphs on the backend | host work, "
             "preprocess graph only | host work, all on the host | of it pre-processing | of it "
             "post-processing | engines (all on the host) | host work before |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for k, v in rec["host"].items():
        g, p, a, b = v["backend"], v["pre"], v["host"], v["before"]
        lines.append(f"| {k} | {_ms(g['host'])} | {_ms(g['graph'])} | {_ms(p['host'])} | {_ms(a['host'])} | "
                     f"{_ms(a['preprocess'])} | {_ms(a['postprocess'])} | {_ms(a['engine'])} | {_ms(b['host'])} |")
    lines += ["", "## Overlay (draw_masks, one concept)", "",
              "| frame | smooth before | smooth after | noisy before | noisy after |", "|---|---:|---:|---:|---:|"]
    for k, v in rec["overlay"].items():
        lines.append(f"| {k} | {_ms(v['smooth before'])} | {_ms(v['smooth after'])} | "
                     f"{_ms(v['noisy before'])} | {_ms(v['noisy after'])} |")
    lines += ["", "## Host memory per ONNX Runtime memory mode and file set (fresh process each)", "",
              "cpu-fused: the image encoder and memory attention from their fused-attention files (the CPU "
              "provider's default); fp32: every stage from its FP32 file.", "",
              "| mode | files | references | peak RSS MB | RSS after MB | 1280x720 frame ms |",
              "|---|---|---:|---:|---:|---:|"]
    for m in rec["memory"]:
        lines.append(f"| {m['mode']} | {m.get('files', 'fp32')} | {m['refs']} | {m['peak_rss_mb']:.0f} | "
                     f"{m['rss_mb']:.0f} | {_ms(m['frame'])} |")
    lines += ["", f"Command: `{rec['command']}`", ""]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    from bench.report import parsed_args, run_report

    args = parsed_args(parse_args, argv)
    if args.memory_child:
        print(json.dumps(memory_child(args.model_dir, args.memory_child, args.refs, args.iterations,
                                      args.threads, args.memory_files)))
        return 0
    return run_report(args, run, markdown)


if __name__ == "__main__":
    sys.exit(main())
