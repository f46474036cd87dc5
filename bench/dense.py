"""``python -m bench.dense``: latency and throughput of SAM2-UNet / SAM2-UNeXT / feature engines.

``bench.throughput`` measures the few-shot pipeline; this measures the dense
folders with the same figures and helpers (``summarize``, ``time_calls``,
FLOPs counted at export and stored in the manifest, the machine peak from ``bench.peak``), one row set
per folder (folders of different models may be mixed):

- **parts**: each exported part alone on identical feeds at batch 1, median /
  p90 / p99, GFLOP (counted once on the PyTorch export modules), GFLOP/s and
  share of the peak measured in the same run;
- **end to end**: ``DenseSegmenter.predict`` (or ``FeatureExtractor.extract``)
  on a ``--image-hw`` uint8 image: pre-processing, every part, post-processing;
- **batch**: the chained parts at each ``--batch`` size the engines allow,
  images/s;
- with ``--compare-pytorch`` (needs torch and ``export/``): the same parts as PyTorch eager modules (and the
  whole model) in the same run, and every part's speed-up over PyTorch.

Writes ``OUT.json`` and ``OUT.md``. Bad input exits with status 2.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from bench.throughput import BenchError, _int_list, _machine, _versions, peak_rss_mb, summarize, time_calls


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.dense", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model-dir", nargs="+", type=Path, required=True, dest="folders",
                   help="folders made by export.build --model sam2-unet|sam2-unext|features")
    p.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "tensorrt", "auto"))
    p.add_argument("--batch", default="1,2", help="batch sizes of the chained-parts throughput")
    p.add_argument("--image-hw", default="480,640", help="H,W of the end-to-end test image")
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: backend default)")
    p.add_argument("--compare-pytorch", action="store_true", help="time the PyTorch modules too")
    p.add_argument("--peak-size", type=int, default=4096, help="matrix side of the peak matmul")
    p.add_argument("--out", type=Path, required=True, help="output path without suffix")
    p.add_argument("--debug", action="store_true", help="on an error, print the full traceback")
    return p.parse_args(argv)


def choice_from_manifest(manifest):
    """The :class:`~export.dense.models.DenseChoice` a folder was built from."""
    from export.dense.dinov2 import DinoConfig
    from export.dense.models import DenseChoice

    m, d = manifest.model, manifest.model.details
    return DenseChoice(manifest.kind, trunk=d["trunk"], sam2_version=m.sam2_version,
                       image_size=m.image_size, fpn=bool(d.get("fpn")), split=bool(d.get("split")),
                       dino=DinoConfig(**d["dino"]) if d.get("dino") else None)


def _validate(args) -> list:
    from runtime.core.folder import ModelFolder

    if args.iterations < 1:
        raise BenchError(f"--iterations must be >= 1, got {args.iterations}")
    if args.warmup < 0 or args.threads < 0:
        raise BenchError("--warmup and --threads must be >= 0")
    args.batch_list = _int_list(args.batch, "batch")
    hw = _int_list(args.image_hw, "image-hw")
    if len(hw) != 2:
        raise BenchError(f"--image-hw must be H,W, got {args.image_hw!r}")
    args.hw = tuple(hw)
    return [ModelFolder.open(d, kinds=("sam2-unet", "sam2-unext", "features")).manifest
            for d in args.folders]


def _row(part, s, flop, peak, pt_median=None):
    row = {"part": part, **s}
    if flop:
        row.update(gflop=flop / 1e9, gflops=flop / 1e9 / s["median"],
                   peak_fraction=flop / 1e9 / s["median"] / peak if peak else None)
    if pt_median:
        row["speedup_vs_pytorch"] = pt_median / s["median"]
    return row


def bench_folder(engine_dir: Path, manifest, args, peak: float) -> dict:
    from bench.cases import case_key
    from runtime.core.spec import example_feeds
    from runtime.dense.features import FeatureExtractor
    from runtime.dense.segmenter import DenseSegmenter, run_parts

    specs = manifest.specs
    flops = {k: manifest.flops.get("export", {}).get(case_key(k, {"batch": 1})) for k in specs}
    cls = FeatureExtractor if manifest.kind == "features" else DenseSegmenter
    runner = cls.load(engine_dir, backend=args.backend, threads=args.threads)
    label = f"{engine_dir.name} [{runner.backend}, {manifest.precision}]"
    pt_parts: Dict[str, dict] = {}
    if args.compare_pytorch:
        try:
            import torch

            from export.dense.models import build_dense, export_nets, reference_net
        except ImportError as e:
            raise BenchError(f"--compare-pytorch needs the workstation side (torch, export/): {e}; "
                             "install it (scripts/install.sh) or drop --compare-pytorch") from e
        choice = choice_from_manifest(manifest)
        model = build_dense(choice)  # eager timings do not depend on the weights' values
        nets = export_nets(model, choice)
        if args.threads:
            torch.set_num_threads(args.threads)
        with torch.no_grad():
            for k, sp in specs.items():
                feeds = example_feeds(sp, {"batch": 1})
                targs = [torch.from_numpy(feeds[n]) for n in sp.input_names]
                pt_parts[k] = summarize(time_calls(lambda: nets[k](*targs), args.warmup, args.iterations))
            ref = reference_net(model, choice)
            x = torch.from_numpy(example_feeds(next(iter(specs.values())), {"batch": 1})["image"])
            pt_whole = summarize(time_calls(lambda: ref(x), args.warmup, args.iterations))
    parts = []
    for k, sp in specs.items():
        feeds = example_feeds(sp, {"batch": 1})
        s = summarize(time_calls(lambda: runner.session.runners[k].infer(feeds), args.warmup, args.iterations))
        parts.append(_row(k, s, flops[k], peak, pt_parts.get(k, {}).get("median")))
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (*args.hw, 3), dtype=np.uint8)
    call = runner.extract if manifest.kind == "features" else runner.predict
    per: Dict[str, List[float]] = {}
    time_calls(lambda: call(img), args.warmup, 0)
    for _ in range(args.iterations):
        call(img)
        for k, v in runner.timings.items():
            per.setdefault(k, []).append(v)
    e2e = {"image_hw": list(args.hw), "stages": {k: summarize(v) for k, v in per.items()}}
    e2e["images_per_s"] = 1.0 / e2e["stages"]["total"]["median"]
    if args.compare_pytorch:
        e2e["pytorch_model"] = pt_whole  # the whole model, same size input, no pre/post-processing
    batch = []
    bmax = manifest.axis_max("batch")
    for b in args.batch_list:
        if b > bmax:
            batch.append({"batch": b, "skipped": f"engine batch axis allows at most {bmax}"})
            continue
        x = example_feeds(next(iter(specs.values())), {"batch": b})["image"]
        s = summarize(time_calls(lambda: run_parts(runner.session.runners, specs, {"image": x}),
                                 args.warmup, args.iterations))
        batch.append({"batch": b, **s, "images_per_s": b / s["median"]})
    runner.close()
    return {"label": label, "engines": str(engine_dir), "kind": manifest.kind,
            "model": manifest.model.to_dict(), "backend": runner.backend, "precision": manifest.precision,
            "parts": parts, "pytorch_parts": [_row(k, s, flops[k], peak) for k, s in pt_parts.items()],
            "end_to_end": e2e, "batch": batch, "peak_rss_mb": peak_rss_mb()}


def _ms(x) -> str:
    return "-" if x is None else f"{1e3 * x:.1f}"


def markdown(rec: dict) -> str:
    s = rec["settings"]
    lines = ["# Dense-model benchmark", "",
             f"Machine: {rec['machine']['cpu']} ({rec['machine']['cores']} cores); onnxruntime "
             f"{rec['versions'].get('onnxruntime')}, torch {rec['versions'].get('torch')}. "
             f"Backend {s['backend']}, threads {s['threads']}, warm-up {s['warmup']}, "
             f"{s['iterations']} iterations. Peak (fp32 matmul, same run): {rec['peak_gflops']:.0f} GFLOP/s.",
             "The variant's precision is the folder's engine precision; the onnxruntime backend runs "
             "its fp32 ONNX files.",
             "", "## Parts (batch 1; ms)", "",
             "| variant | part | GFLOP | median | p90 | GFLOP/s | % peak | PyTorch median | vs PyTorch |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for v in rec["variants"]:
        pt = {r["part"]: r for r in v["pytorch_parts"]}
        for r in v["parts"]:
            p = pt.get(r["part"], {})
            lines.append(f"| {v['label']} | {r['part']} | {r.get('gflop', 0):.1f} | {_ms(r['median'])} | "
                         f"{_ms(r['p90'])} | {r.get('gflops', 0):.1f} | "
                         f"{100 * (r.get('peak_fraction') or 0):.0f}% | {_ms(p.get('median'))} | "
                         + (f"{r['speedup_vs_pytorch']:.2f}x" if r.get("speedup_vs_pytorch") else "-") + " |")
    lines += ["", "## End to end (one uint8 image: pre-processing, parts, post-processing; median ms)", "",
              "| variant | image | stages | total | images/s | PyTorch model only |", "|---|---|---|---:|---:|---:|"]
    for v in rec["variants"]:
        e = v["end_to_end"]
        st = ", ".join(f"{k} {_ms(x['median'])}" for k, x in e["stages"].items() if k != "total")
        lines.append(f"| {v['label']} | {e['image_hw'][0]}x{e['image_hw'][1]} | {st} | "
                     f"{_ms(e['stages']['total']['median'])} | {e['images_per_s']:.2f} | "
                     f"{_ms(e.get('pytorch_model', {}).get('median'))} |")
    lines += ["", "## Batch throughput (chained parts)", "", "| variant | batch | median ms | images/s |",
              "|---|---:|---:|---:|"]
    for v in rec["variants"]:
        for b in v["batch"]:
            lines.append(f"| {v['label']} | {b['batch']} | " + (
                f"skipped: {b['skipped']} | - |" if b.get("skipped")
                else f"{_ms(b['median'])} | {b['images_per_s']:.2f} |"))
    lines += ["", "Peak host RSS: " + "; ".join(f"{v['label']} {v['peak_rss_mb']:.0f} MB" for v in rec["variants"]),
              "", f"Command: `{rec['command']}`", ""]
    return "\n".join(lines)


def run(args) -> dict:
    manifests = _validate(args)
    from bench.peak import measure_peak

    peak = measure_peak(min(args.peak_size, 4096), threads=args.threads or None)
    peak_gflops = ((peak["cuda"] or peak["cpu"]) if args.backend == "tensorrt" else peak["cpu"])["gflops"]
    variants = []
    for d, m in zip(args.folders, manifests):
        print(f"[bench] {d} ({args.backend}) ...", flush=True)
        variants.append(bench_folder(d, m, args, peak_gflops))
    return {"command": "python -m bench.dense " + " ".join(shlex.quote(a) for a in args.argv),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": _machine(), "versions": _versions(),
            "settings": {"backend": args.backend, "threads": args.threads, "batch": args.batch_list,
                         "iterations": args.iterations, "warmup": args.warmup,
                         "compare_pytorch": args.compare_pytorch},
            "peak": peak, "peak_gflops": peak_gflops, "variants": variants}


def main(argv: Optional[List[str]] = None) -> int:
    from bench.report import parsed_args, run_report

    args = parsed_args(parse_args, argv)

    return run_report(args, run, markdown, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
