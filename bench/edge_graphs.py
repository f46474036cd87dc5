"""``python -m bench.edge_graphs``: a frame -> the model input, on the host vs in its edge graph.

Each preprocessing the runtime reproduces (sam2's image predictor: torch's
antialiased bilinear; sam2's video loader: Pillow's bicubic; the dense models:
Pillow's bilinear) is timed at each ``--sizes`` frame size two ways in one run:
the host's NumPy code (what ``preprocess="host"`` runs) and the edge graph
``export.build`` writes for it (what ``preprocess="backend"`` runs), here on
ONNX Runtime's CPU provider with ``--threads`` intra-op threads (on TensorRT
and GPU providers the graph runs on the device: not measured here). Both give
the same model input (checked on every frame: rel. L2 <= 1e-6 for the float
graph, bit for bit for the Pillow graphs). This is what ``preprocess="auto"``
weighs on a CPU. Builds the graphs in memory (``export.edges``: needs onnx);
writes ``OUT.json`` and ``OUT.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from bench.throughput import BenchError, _machine, _versions, frame_sizes, summarize, time_calls

def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.edge_graphs", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sizes", default="640x480,1280x720,1920x1080", help="frame sizes, WxH")
    p.add_argument("--image-size", type=int, default=1024, help="SAM2 model size (image predictor, video loader)")
    p.add_argument("--dense-size", type=int, default=352, help="dense model size (Pillow bilinear)")
    p.add_argument("--iterations", type=int, default=7)
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (0: one per core)")
    p.add_argument("--out", type=Path, required=True, help="output path without suffix")
    return p.parse_args(argv)


def _cases(image_size: int, dense_size: int) -> Dict[str, tuple]:
    """Edge graph kind (:data:`export.edges.EDGE_GRAPHS`) -> (model size, its graph's spec)."""
    from runtime.core.edges import pil_preprocess_spec
    from runtime.sam2.spec import preprocess_spec, video_preprocess_spec

    return {"image-predictor": (image_size, preprocess_spec(image_size)),
            "video-loader": (image_size, video_preprocess_spec(image_size)),
            "pillow-bilinear": (dense_size, pil_preprocess_spec("preprocess", dense_size, "bilinear"))}


def run(args) -> dict:
    import onnxruntime as ort

    from export.edges import EDGE_GRAPHS
    from runtime.core.compare import compare_arrays

    sizes = frame_sizes(args.sizes, "--sizes")
    if args.iterations < 1 or args.threads < 0:
        raise BenchError("--iterations must be >= 1 and --threads >= 0")
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    rng = np.random.default_rng(0)
    rows: List[dict] = []
    for name, (size, spec) in _cases(args.image_size, args.dense_size).items():
        kind = EDGE_GRAPHS[name]
        host, feeds = kind.host, kind.feeds
        graph = kind.build(spec).SerializeToString()
        sess = ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])
        for h, w in sizes:
            frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            ref, got = host(frame, size), sess.run(["image"], feeds(frame, size))[0]
            rel = compare_arrays(got, ref)["rel_l2"]
            if rel > 1e-6 or (name != "image-predictor" and not np.array_equal(got, ref)):
                raise BenchError(f"{name} at {w}x{h}: the graph and the host disagree (rel L2 {rel:.1e})")
            rows.append({"semantics": name, "model_size": size, "frame": [h, w], "rel_l2": rel,
                         "host": summarize(time_calls(lambda: host(frame, size), 1, args.iterations)),
                         "graph": summarize(time_calls(lambda: sess.run(["image"], feeds(frame, size)), 1,
                                                       args.iterations))})
    return {"rows": rows, "threads": args.threads, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": _machine(), "versions": _versions(),
            "command": "python -m bench.edge_graphs " + " ".join(args.argv)}


def markdown(rec: dict) -> str:
    def ms(s):
        return f"{s['median'] * 1e3:.1f} / {s['p90'] * 1e3:.1f}"

    lines = ["# A frame -> the model input: host (NumPy) vs the edge graph on ONNX Runtime's CPU provider", "",
             f"{rec['machine']['cpu']}, {rec['machine']['cores']} cores; onnxruntime "
             f"{rec['versions'].get('onnxruntime')}, {rec['threads']} intra-op threads. Milliseconds, median / p90.", "",
             "| preprocessing | model px | frame | host NumPy | graph (ORT CPU) | graph / host | rel. L2 |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for r in rec["rows"]:
        ratio = r["graph"]["median"] / r["host"]["median"]
        lines.append(f"| {r['semantics']} | {r['model_size']} | {r['frame'][1]}x{r['frame'][0]} | {ms(r['host'])} | "
                     f"{ms(r['graph'])} | {ratio:.2f}x | {r['rel_l2']:.1e} |")
    lines += ["", f"Command: `{rec['command']}`", ""]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    from bench.report import parsed_args, run_report

    return run_report(parsed_args(parse_args, argv), run, markdown)


if __name__ == "__main__":
    sys.exit(main())
