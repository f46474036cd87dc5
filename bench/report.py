"""Benchmark report: the JSON record, a Markdown summary and a PNG chart.

The PNG (matplotlib, Agg backend: no display needed) shows per-stage median
latency as grouped bars, one group per stage and one bar per variant
(model folder / backend / precision, and the PyTorch reference).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

from runtime.core.fileio import atomic_path, write_json_atomic


def _ms(x) -> str:
    return "-" if x is None else f"{1e3 * x:.1f}"


def _num(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _ratio(x) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _rounds(settings: Dict) -> str:
    r = settings.get("rounds", 1)
    return f" x {r} rounds (order alternating, samples pooled)" if r > 1 else ""


def markdown(rec: Dict) -> str:
    s = rec["settings"]
    lines = [f"# Benchmark: {rec['model']['name']} SAM{rec['model']['sam2_version']} "
             f"@ {rec['model']['image_size']} px", "",
             f"Machine: {rec['machine']['cpu']} ({rec['machine']['cores']} cores), "
             f"{rec['machine']['platform']}; onnxruntime {rec['versions'].get('onnxruntime')}, "
             f"torch {rec['versions'].get('torch')}.",
             f"Settings: backend={s['backend']}, threads={s['threads']}, shots={s['shots']}, "
             f"batch={s['batch']}, warm-up {s['warmup']}, {s['iterations']} iterations"
             f"{_rounds(s)}"
             + (f", target frames {s['frame'][0]}x{s['frame'][1]}, preprocess={s['preprocess']}, "
                f"postprocess={s.get('postprocess', 'host')}"
                if s.get("frame") else "")
             + ". "
             f"Peak (fp32 matmul {rec['peak']['cpu']['n']}^3, same run): "
             f"{rec['peak']['cpu']['gflops']:.0f} GFLOP/s"
             + (f"; INT8 GEMM (ORT MatMulInteger {rec['peak']['cpu_int8']['n']}^3): "
                f"{rec['peak']['cpu_int8']['gops']:.0f} GOP/s" if rec["peak"].get("cpu_int8") else "")
             + ". \"% peak\" is of the FP32 peak for every row (INT8 rows can exceed 100%).", ""]
    first = len(rec["variants"]) > 1
    if first:
        lines += [f"\"vs 1st\": speed-up over the first variant, {rec['variants'][0]['label']} "
                  "(> 1: faster).", ""]
    c1, a1 = (" vs 1st |", "---:|") if first else ("", "")
    lines += ["## Per-stage latency (same inputs; ms: median / p90 / p99)", "",
              "| variant | stage | case | GFLOP | median | p90 | p99 | GFLOP/s | % peak | vs PyTorch |" + c1,
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|" + a1]
    for v in rec["variants"] + ([rec["pytorch"]] if rec.get("pytorch") else []):
        for row in v["stages"]:
            lines.append(
                f"| {v['label']} | {row['stage']} | {row['case']} | "
                f"{_num(row.get('gflop'))} | "
                f"{_ms(row['median'])} | {_ms(row['p90'])} | {_ms(row['p99'])} | "
                f"{_num(row.get('gflops'))} | {_pct(row.get('peak_fraction'))} | "
                f"{_ratio(row.get('speedup_vs_pytorch'))} |"
                + (f" {_ratio(row.get('speedup_vs_1st'))} |" if first else ""))
    lines += _work_note(rec)
    lines += ["", "## Pipeline (FewShotSegmenter vs TorchFewShotSegmenter, same images)", "",
              "| variant | shots | steady frame ms (median / p90 / p99) | frames/s | vs PyTorch |"
              + (" vs 1st |" if first else "") + " reference ms (median) | refs/s | vs PyTorch |"
              + (" vs 1st |" if first else ""),
              "|---|---:|---|---:|---:|" + a1 + "---:|---:|---:|" + a1]
    for v in rec["variants"] + ([rec["pytorch"]] if rec.get("pytorch") else []):
        for p in v.get("pipeline", []):
            f, r = p["frame"], p["reference"]
            lines.append(
                f"| {v['label']} | {p['shots']} | {_ms(f['median'])} / {_ms(f['p90'])} / {_ms(f['p99'])} | "
                f"{p['frames_per_s']:.2f} | {_ratio(p.get('frame_speedup_vs_pytorch'))} |"
                + (f" {_ratio(p.get('frame_speedup_vs_1st'))} |" if first else "")
                + f" {_ms(r['median'])} | {p['references_per_s']:.2f} | "
                f"{_ratio(p.get('reference_speedup_vs_pytorch'))} |"
                + (f" {_ratio(p.get('reference_speedup_vs_1st'))} |" if first else ""))
    hw = [(v, p) for v in rec["variants"] for p in v.get("pipeline", []) if "host" in p.get("frame_stages", {})]
    if hw:
        lines += ["", "## Host work per frame (wall time outside the backends' run calls)", "",
                  "| variant | shots | pre- / post-processing on | host ms (median / p90) | "
                  "pre-processing (incl. its graph) | post-processing (incl. its graph) |",
                  "|---|---:|---|---|---:|---:|"]
        for v, p in hw:
            fs = p["frame_stages"]
            lines.append(f"| {v['label']} | {p['shots']} | {v.get('preprocess', 'host')} / "
                         f"{v.get('postprocess', 'host')} | "
                         f"{_ms(fs['host']['median'])} / {_ms(fs['host']['p90'])} | "
                         f"{_ms(fs['preprocess']['median'])} | {_ms(fs['postprocess']['median'])} |")
    pr = [(v["label"], name, r) for v in rec["variants"] for name, r in v.get("products", {}).items()]
    if pr:
        lines += ["", "## Host work per call, stock SAM2 products (ImagePredictor: set_image + one click; "
                  "VideoTracker: track_frame, one object, its memory bank full)", "",
                  "| variant | product | host ms (median / p90) | wall ms (median) |", "|---|---|---|---:|"]
        for label, name, r in pr:
            lines.append(f"| {label} | {name} | {_ms(r['host']['median'])} / {_ms(r['host']['p90'])} | "
                         f"{_ms(r['wall']['median'])} |")
    st = [(v["label"], p) for v in rec["variants"] for p in v.get("pipeline", [])
          if p.get("stream_frames_per_s")]
    if st:
        lines += ["", "## Stream (segment_stream, frames back to back; pipelined: the next frame's "
                  "encoder overlaps this frame's memory attention and decoder)", "",
                  "| variant | shots | sequential frames/s | pipelined frames/s | pipelined vs sequential |",
                  "|---|---:|---:|---:|---:|"]
        for label, p in st:
            f = p["stream_frames_per_s"]
            lines.append(f"| {label} | {p['shots']} | {f['sequential']:.2f} | {f['pipelined']:.2f} | "
                         f"{_ratio(f['pipelined'] / f['sequential'])} |")
    bt = [(v["label"], b) for v in rec["variants"] for b in v.get("batch", [])]
    if bt:
        lines += ["", "## Image encoder throughput", "", "| variant | batch | median ms | images/s |",
                  "|---|---:|---:|---:|"]
        for label, b in bt:
            if b.get("skipped"):
                lines.append(f"| {label} | {b['batch']} | skipped: {b['skipped']} | - |")
            else:
                lines.append(f"| {label} | {b['batch']} | {_ms(b['median'])} | {b['images_per_s']:.2f} |")
    lines += ["", "## Memory", ""]
    for v in rec["variants"] + ([rec["pytorch"]] if rec.get("pytorch") else []):
        lines.append(f"- {v['label']}: peak host RSS while it ran {v.get('rss_peak_mb', 0):.0f} MB "
                     f"(+{v.get('rss_growth_mb', 0):.0f} MB over the RSS it started at)"
                     + (f", device {v['device_mem_mb']:.0f} MB" if v.get("device_mem_mb") else ""))
    lines.append(f"- process peak RSS (ru_maxrss, all variants): "
                 f"{max(v.get('peak_rss_mb', 0) for v in rec['variants']):.0f} MB")
    lines += ["", f"Command: `{rec['command']}`", ""]
    return "\n".join(lines)


def _work_note(rec: Dict) -> List[str]:
    """How GFLOP is counted, and where this export executes less than sam2's computation."""
    ref, ex = rec.get("flops", {}), rec.get("flops_export", {})
    less = [f"{k} {ex[k] / 1e9:.1f}" for k in ref if k in ex and ex[k] < ref[k]]
    note = ("GFLOP is sam2's computation (the PyTorch reference), counted once; every row is "
            "rated on it.")
    if less:
        note += (" The current export executes less, exactly (value projection folded into the "
                 f"output projection): {', '.join(less)} GFLOP, so for engines built with it "
                 "GFLOP/s and % peak are effective rates.")
    return ["", note]


def plot(rec: Dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = rec["variants"] + ([rec["pytorch"]] if rec.get("pytorch") else [])
    keys: List[str] = []
    for v in variants:
        for r in v["stages"]:
            k = f"{r['stage']}\n{r['case']}"
            if k not in keys:
                keys.append(k)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(keys)), 4.5))
    width = 0.8 / max(1, len(variants))
    for i, v in enumerate(variants):
        vals = {f"{r['stage']}\n{r['case']}": 1e3 * r["median"] for r in v["stages"]}
        xs = [j + i * width for j in range(len(keys))]
        ax.bar(xs, [vals.get(k, 0.0) for k in keys], width, label=v["label"])
    ax.set_xticks([j + width * (len(variants) - 1) / 2 for j in range(len(keys))])
    ax.set_xticklabels(keys, fontsize=8)
    ax.set_ylabel("median latency (ms)")
    ax.set_title(f"{rec['model']['name']} @ {rec['model']['image_size']} px: per-stage latency")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_report(rec: Dict, out: Path) -> Dict[str, Path]:
    """Write ``out.json``, ``out.md`` and, where matplotlib is installed, ``out.png``; returns their paths."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = {"json": out.with_suffix(".json"), "md": out.with_suffix(".md"), "png": out.with_suffix(".png")}
    try:
        import matplotlib  # noqa: F401  (the bench extra; absent where only the runtime is installed)
    except ImportError:
        del paths["png"]
    write_json_atomic(paths["json"], rec)
    md = markdown(rec)
    with atomic_path(paths["md"]) as tmp:
        Path(tmp).write_text(md)
    if "png" in paths:
        plot(rec, paths["png"])
    return paths


def parsed_args(parse_args: Callable[[List[str]], object], argv: Optional[List[str]] = None):
    """``parse_args(argv)`` (default: the command line) with ``argv`` kept as ``args.argv``, from which
    a benchmark's record states its command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.argv = argv
    return args


def run_report(args, run: Callable[[object], Dict], markdown: Callable[[Dict], str], debug: bool = False) -> int:
    """A benchmark's main: ``rec = run(args)``, then ``args.out`` + ``.json`` (the record) and
    ``.md`` (``markdown(rec)``), each written atomically, and the summary printed; errors
    reported as the CLIs do (:func:`runtime.cli.common.run_main`)."""
    from runtime.cli.common import run_main

    def body():
        rec = run(args)
        md = markdown(rec)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.out.with_suffix(".json"), rec)
        with atomic_path(args.out.with_suffix(".md")) as tmp:
            Path(tmp).write_text(md)
        print(md)
        print(f"wrote {args.out.with_suffix('.json')}, {args.out.with_suffix('.md')}")

    return run_main(body, debug=debug)


def load(path: Path) -> Dict:
    return json.loads(Path(path).read_text())
