"""``python -m bench.throughput``: per-stage latency and throughput of model folders.

For every model folder (all of one model and image size; their manifests
are compared) and every ``--shots`` k, on the same synthetic images:

- **stages**: each stage runner alone on identical feeds (memory attention
  with k memories and k pointers), warm-up then N iterations, median / p90 /
  p99; FLOPs per stage (counted at export on the PyTorch sub-networks and
  stored in the manifest: no PyTorch needed here) and achieved GFLOP/s as a fraction of the machine peak
  measured in the same run (bench/peak.py);
- **pipeline**: ``FewShotSegmenter`` steady state (references cached: one
  ``segment`` per frame, per-stage timings incl. pre/post-processing) and
  reference encoding (``add_reference``), frames/s and references/s; and the
  host work per frame (wall time outside the backends' run calls, median /
  p90; ``bench.frame_budget`` splits it by frame size); targets are
  ``--frame WxH`` frames (default: the model size), pre- and post-processed
  where ``--preprocess`` / ``--postprocess`` say (:meth:`runtime.EngineSession.open`);
- **products** (stock SAM2 folders): host work per call of
  ``ImagePredictor`` (``set_image`` + one click) and ``VideoTracker``
  (``track_frame``, one object prompted with a box, once its memory bank is
  full), on the same frames;
- **stream**: ``segment_stream`` over consecutive frames, sequential and
  pipelined (the next frame's encoder overlapping this frame's memory
  attention and decoder; onnxruntime only), frames/s of each;
- **batch**: image-encoder throughput at ``--batch`` sizes the engine's batch
  axis allows;
- ``--cpu-int8 both``: folders built with ``export.build --cpu-int8`` are
  timed twice, FP32 and with their dynamic-INT8 stages (ONNX Runtime CPU);
- several folders (e.g. one built with ``--plain-export``, one without):
  every figure also as a ratio to the first variant ("vs 1st");
- with ``--compare-pytorch`` (needs the workstation side: torch, sam2,
  ``export/``): the same on the PyTorch reference
  (``TorchFewShotSegmenter`` and the sub-networks in sam2's order of
  operations) in the same run, every figure also as a speed-up ratio;
- host memory per variant: peak RSS while it ran and its rise above the RSS
  it started at (bench/rss.py), the process peak, and CUDA device memory
  where torch sees a GPU.

``--rounds R`` repeats everything R times, every other round in reverse
order, and pools the samples: on a machine shared with other jobs, load that
comes and goes then hits every variant alike, so the ratios stay comparable.

Writes ``OUT.json`` (machine, versions, settings, all figures), ``OUT.md``
and ``OUT.png``. Bad input (mixed models/sizes, zero iterations, unknown
backend, missing folder, zero rounds) exits with status 2 and a message.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from bench.cases import case_key, clamp_axes, sam2_cases
from runtime.cli.common import add_edge_options
from runtime.errors import UsageError
from runtime.sam2.spec import EDGE_STAGES

BACKENDS = ("onnxruntime", "tensorrt", "auto")
CPU_INT8_CHOICES = ("auto", "on", "off", "both")
PIPE_STAGES = ("preprocess", "image_encoder", "memory_attention", "mask_decoder", "postprocess", "total")


class BenchError(UsageError):
    """Bad benchmark input: reported as ``error: ...`` with exit status 2."""


def frame_sizes(text: str, flag: str, one: bool = False) -> List[tuple]:
    """``"WxH,WxH"`` -> ``[(H, W), ...]`` (sides >= 16); ``one``: exactly one size."""
    form = "WxH" if one else "WxH,WxH,..."
    try:
        out = [tuple(int(v) for v in s.lower().split("x")) for s in text.split(",") if s.strip()]
    except ValueError:
        raise BenchError(f"{flag} takes {form}, got {text!r}") from None
    if not out or (one and len(out) > 1) or any(len(s) != 2 or min(s) < 16 for s in out):
        raise BenchError(f"{flag} takes {form} with sides >= 16, got {text!r}")
    return [(h, w) for w, h in out]


def _int_list(text: str, what: str) -> List[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BenchError(f"--{what} must be comma-separated integers, got {text!r}")
    if not vals or min(vals) < 1:
        raise BenchError(f"--{what} values must be >= 1, got {text!r}")
    return vals


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model-dir", nargs="+", type=Path, required=True, dest="folders",
                   help="model folders (export.build) of one model and image size")
    p.add_argument("--backend", default="onnxruntime", help=f"one of {', '.join(BACKENDS)}")
    p.add_argument("--shots", default="1,5", help="references per concept, comma separated")
    p.add_argument("--batch", default="1,4", help="image-encoder batch sizes")
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat all variants this many times, alternating their order (shared machines)")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: backend default)")
    p.add_argument("--cpu-int8", default="auto", choices=CPU_INT8_CHOICES,
                   help="onnxruntime on the CPU: run folders' dynamic-INT8 stages (auto/on), FP32 "
                        "only (off), or time both as separate variants (both)")
    p.add_argument("--frame", default=None, metavar="WxH",
                   help="target frame size (default: the model's image size); references stay at it")
    add_edge_options(p)
    p.add_argument("--compare-pytorch", action="store_true", help="time the PyTorch reference too")
    p.add_argument("--peak-size", type=int, default=4096, help="matrix side of the peak matmul")
    p.add_argument("--out", type=Path, required=True, help="output path without suffix")
    p.add_argument("--debug", action="store_true", help="on an error, print the full traceback")
    return p.parse_args(argv)


def validate(args) -> List[dict]:
    """Check the settings and the folders; returns their manifests."""
    from runtime.core.folder import ModelFolder

    if args.backend not in BACKENDS:
        raise BenchError(f"unknown backend {args.backend!r}; choose one of {', '.join(BACKENDS)}")
    if args.iterations < 1:
        raise BenchError(f"--iterations must be >= 1, got {args.iterations}")
    if args.rounds < 1:
        raise BenchError(f"--rounds must be >= 1, got {args.rounds}")
    if args.warmup < 0:
        raise BenchError(f"--warmup must be >= 0, got {args.warmup}")
    if args.threads < 0:
        raise BenchError(f"--threads must be >= 0, got {args.threads}")
    args.frame_hw = frame_sizes(args.frame, "--frame", one=True)[0] if args.frame else None
    args.shots_list = _int_list(args.shots, "shots")
    args.batch_list = _int_list(args.batch, "batch")
    manifests = [ModelFolder.open(d, kinds=("sam2-fewshot", "sam2")).manifest for d in args.folders]
    keys = ("name", "sam2_version", "image_size", "adapters")

    def describe(m):
        return {**{k: m.model.to_dict().get(k) for k in keys}, "kind": m.kind}

    first = describe(manifests[0])
    for d, m in zip(args.folders[1:], manifests[1:]):
        other = describe(m)
        if other != first:
            diff = {k: (first[k], other[k]) for k in keys if first[k] != other[k]}
            raise BenchError(
                f"model folders are of different models: {args.folders[0]} vs {d} differ in "
                + ", ".join(f"{k} ({a!r} vs {b!r})" for k, (a, b) in diff.items())
                + "; benchmark one model and image size per report")
    return manifests


# ------------------------------------------------------------------ timing
def summarize(samples: List[float]) -> Dict[str, float]:
    a = np.asarray(samples, np.float64)
    return {"median": float(np.median(a)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "min": float(a.min()),
            "n": int(a.size)}


def time_calls(fn: Callable[[], object], warmup: int, iterations: int) -> List[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iterations):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def peak_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / 2 ** 20


def _device_mem_mb() -> Optional[float]:
    """CUDA memory PyTorch allocated (the ``--compare-pytorch`` reference); None where torch is not in use."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return None


# ------------------------------------------------------------------ inputs
def synthetic_images(size: int, count: int, seed: int = 0):
    """Images ``[size, size, 3]`` uint8 and disc masks, deterministic."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    imgs, masks = [], []
    for i in range(count):
        imgs.append(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        masks.append((yy - cy) ** 2 + (xx - cx) ** 2 < (size // 6) ** 2)
    return imgs, masks


# ------------------------------------------------------------------ runs
def _time_references(segmenter, k: int, refs, masks) -> List[float]:
    """Clear ``segmenter`` (runtime or PyTorch reference) and add k references; seconds each."""
    segmenter.clear()
    times = []
    for i in range(k):
        t = time.perf_counter()
        segmenter.add_reference(refs[i % len(refs)], masks[i % len(masks)], concept="bench")
        times.append(time.perf_counter() - t)
    return times


def engine_variants(args, manifests) -> List[tuple]:
    """``(model folder, manifest, cpu_int8 mode)`` per variant to time, in the given order."""
    out = []
    for d, m in zip(args.folders, manifests):
        has = any("cpu-int8" in st.files for st in m.stages.values())
        if args.cpu_int8 == "on" and not has:
            raise BenchError(f"--cpu-int8 on: {d} has no dynamic-INT8 stages (build it with "
                             "export.build --cpu-int8-stages STAGES, or use --cpu-int8 auto)")
        modes = ["off", "on"] if args.cpu_int8 == "both" and has else [
            "off" if args.cpu_int8 == "both" else args.cpu_int8]
        out += [(d, m, mode) for mode in modes]
    return out


def collect_engines(engine_dir: Path, manifest, args, frames, refs, masks, cases,
                    cpu_int8: str = "auto") -> dict:
    """One round on a model folder: raw seconds per stage case, pipeline stage and batch size."""
    from runtime.core.session import EngineSession
    from runtime.core.spec import example_feeds
    from runtime.sam2.fewshot import FewShotSegmenter

    specs = manifest.specs
    # One session for every product timed here, so it opens every edge graph of the folder (a
    # product's own load() opens only those it uses).
    session = EngineSession.open(engine_dir, product="FewShotSegmenter", backend=args.backend, threads=args.threads,
                                 cpu_int8=cpu_int8, preprocess=args.preprocess, postprocess=args.postprocess)
    seg = FewShotSegmenter(session)
    int8 = list(seg.session.variant_stages("cpu-int8"))
    precision = manifest.precision if seg.backend == "tensorrt" else "fp32"
    if int8:
        precision += " + int8 dynamic: " + ", ".join(int8)
    raw = {"label": f"{engine_dir.name} [{seg.backend}, {precision}]",
           "engines": str(engine_dir), "backend": seg.backend, "precision": precision,
           "cpu_int8_stages": int8, **{e: "backend" if e in seg.session.runners else "host" for e in EDGE_STAGES},
           "stages": {}, "pipeline": {}, "batch": {}, "products": {}}
    for name, case in cases.items():
        feeds = example_feeds(specs[case["stage"]], clamp_axes(case, specs))
        r = seg.session.runners[case["stage"]]
        raw["stages"][name] = time_calls(lambda: r.infer(feeds), args.warmup, args.iterations)
    for k in args.shots_list:
        ref_t = _time_references(seg, k, refs, masks)
        for _ in range(args.warmup):
            seg.segment(frames[0])
        per = {s: [] for s in PIPE_STAGES + ("host",)}
        for i in range(args.iterations):
            engine0 = seg.session.engine_seconds
            res = seg.segment(frames[i % len(frames)])
            for s in PIPE_STAGES:
                per[s].append(res.timings.get(s, 0.0))
            # host work: the frame's wall time outside the backends' run calls
            per["host"].append(res.timings["total"] - (seg.session.engine_seconds - engine0))
        stream = [frames[i % len(frames)] for i in range(args.iterations + 1)]
        raw["pipeline"][k] = {"frame_stages": per, "reference": ref_t, "stream": {
            mode: [r.timings["total"] for r in seg.segment_stream(stream, pipelined=mode == "pipelined")][1:]
            for mode in ("sequential", "pipelined")}}
    if manifest.kind == "sam2":
        raw["products"] = product_host_work(seg.session, frames, args)
    bmax = specs["image_encoder"].axis_ranges.get("batch", (1, 1, 1))[2]
    for b in args.batch_list:
        if b > bmax:
            raw["batch"][b] = f"engine batch axis allows at most {bmax}"
            continue
        feeds = example_feeds(specs["image_encoder"], {"batch": b})
        r = seg.session.runners["image_encoder"]
        raw["batch"][b] = time_calls(lambda: r.infer(feeds), args.warmup, args.iterations)
    session.close()
    raw.update(peak_rss_mb=peak_rss_mb(), device_mem_mb=_device_mem_mb())
    return raw


def product_host_work(session, frames, args) -> Dict[str, Dict[str, List[float]]]:
    """Wall and host seconds (outside the backends' run calls) per call of the stock-SAM2
    products on ``session``: ``ImagePredictor`` set_image + one click, ``VideoTracker.track_frame``
    (one object, a box on frame 0, timed once its memory bank is full)."""
    from runtime.sam2.predictor import ImagePredictor
    from runtime.sam2.tracker import VideoTracker

    h, w = frames[0].shape[:2]
    click, box = [[w // 2, h // 2]], [w // 4, h // 4, 3 * w // 4, 3 * h // 4]
    out = {}

    def timed(name, call, n, warmup=args.warmup):
        rows = {"wall": [], "host": []}
        for i in range(-warmup, n):
            e0, t = session.engine_seconds, time.perf_counter()
            call(i)
            wall = time.perf_counter() - t
            if i >= 0:
                rows["wall"].append(wall)
                rows["host"].append(wall - (session.engine_seconds - e0))
        out[name] = rows

    pred = ImagePredictor(session)

    def predict(i):
        pred.set_image(frames[i % len(frames)])
        pred.predict(points=click, labels=[1])

    timed("ImagePredictor", predict, args.iterations)
    pred.close()
    trk = VideoTracker(session)
    trk.add_prompt(0, 1, frames[0], box=box)
    # timed once its memory bank is full (the steady state of a long video): num_maskmem frames in
    warm = max(args.warmup, int(session.manifest.model_config["num_maskmem"]))
    timed("VideoTracker", lambda i: trk.track_frame(i + warm + 1, frames[(i + 1) % len(frames)]),
          args.iterations, warm)
    trk.close()
    return out


def collect_pytorch(args, frames, refs, masks, cases, nets, specs, model) -> dict:
    """One round on the PyTorch reference, raw seconds in the layout of :func:`collect_engines`."""
    import torch

    from export.reference import TorchFewShotSegmenter
    from runtime.core.spec import example_feeds

    if args.threads:
        torch.set_num_threads(args.threads)
    raw = {"label": "pytorch reference [eager, fp32]", "backend": "pytorch", "precision": "fp32",
           "stages": {}, "pipeline": {}, "batch": {}}
    with torch.no_grad():
        for name, case in cases.items():
            feeds = example_feeds(specs[case["stage"]], clamp_axes(case, specs))
            net = nets[case["stage"]]
            targs = [torch.from_numpy(feeds[n]) for n in specs[case["stage"]].input_names]
            raw["stages"][name] = time_calls(lambda: net(*targs), args.warmup, args.iterations)
    ref = TorchFewShotSegmenter(model)
    for k in args.shots_list:
        ref_t = _time_references(ref, k, refs, masks)
        time_calls(lambda: ref.segment(frames[0]), args.warmup, 0)  # warm-up only
        frame_t = []
        for i in range(args.iterations):
            t = time.perf_counter()
            ref.segment(frames[i % len(frames)])
            frame_t.append(time.perf_counter() - t)
        raw["pipeline"][k] = {"frame_stages": {"total": frame_t}, "reference": ref_t}
    raw.update(peak_rss_mb=peak_rss_mb(), device_mem_mb=_device_mem_mb())
    return raw


def pool_rounds(rounds: List[dict]):
    """One variant's raw records of several rounds as one: sample lists concatenated,
    numbers (peak memory) the largest, everything else from the first round."""
    first = rounds[0]
    if isinstance(first, dict):
        return {k: pool_rounds([r[k] for r in rounds]) for k in first}
    if isinstance(first, list):
        return [x for r in rounds for x in r]
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        return max(rounds)
    return first


def _stage_row(stage, case, s, flop, peak):
    row = {"stage": stage, "case": case, **s}
    if flop:
        row["gflop"] = flop / 1e9
        row["gflops"] = flop / 1e9 / s["median"]
        row["peak_fraction"] = row["gflops"] / peak if peak else None
    return row


def summarize_variant(raw: dict, cases, flops, peak) -> dict:
    """Raw seconds (:func:`collect_engines`, possibly pooled) -> the report's figures."""
    stages = [_stage_row(cases[n]["stage"], n, summarize(t), flops.get(n), peak)
              for n, t in raw["stages"].items()]
    pipeline = []
    for k, p in raw["pipeline"].items():
        frame, ref = summarize(p["frame_stages"]["total"]), summarize(p["reference"])
        row = {"shots": k, "frame": frame, "frames_per_s": 1.0 / frame["median"],
               "reference": ref, "references_per_s": 1.0 / ref["median"]}
        if p.get("stream"):  # frames back to back; the first one (pipeline fill) is left out
            row["stream_frames_per_s"] = {m: 1.0 / summarize(t)["median"] for m, t in p["stream"].items()}
        if len(p["frame_stages"]) > 1:
            row["frame_stages"] = {s: summarize(v) for s, v in p["frame_stages"].items()}
        pipeline.append(row)
    batch = []
    for b, t in raw["batch"].items():
        if isinstance(t, str):
            batch.append({"batch": b, "skipped": t})
        else:
            s = summarize(t)
            batch.append({"batch": b, **s, "images_per_s": b / s["median"]})
    products = {name: {k: summarize(v) for k, v in rows.items()} for name, rows in raw.get("products", {}).items()}
    return {**{k: v for k, v in raw.items() if k not in ("stages", "pipeline", "batch", "products")},
            "stages": stages, "pipeline": pipeline, "batch": batch, "products": products}


def _attach_ratios(variants: List[dict], base: dict, name: str = "pytorch") -> None:
    """Every figure of every variant also as a speed-up over ``base`` (>1: faster), stored as
    ``speedup_vs_<name>`` (stages), ``frame_/reference_speedup_vs_<name>`` (pipeline)."""
    base_stage = {r["case"]: r["median"] for r in base["stages"]}
    base_pipe = {p["shots"]: p for p in base["pipeline"]}
    for v in variants:
        for r in v["stages"]:
            if r["case"] in base_stage:
                r[f"speedup_vs_{name}"] = base_stage[r["case"]] / r["median"]
        for p in v["pipeline"]:
            q = base_pipe.get(p["shots"])
            if q:
                p[f"frame_speedup_vs_{name}"] = q["frame"]["median"] / p["frame"]["median"]
                p[f"reference_speedup_vs_{name}"] = q["reference"]["median"] / p["reference"]["median"]


def _model_for(manifest):
    from export.adapters import AdapterConfig, fold_adapter_scale
    from export.assembly import assemble
    from export.models import ModelChoice

    m = manifest.model
    ad = m.adapters
    adapters = None if ad is None else AdapterConfig(tuple(ad["stages"]), ad["channel_factor"])
    ck = manifest.provenance.get("checkpoints", {})
    if not m.random_weights and "sam2" not in ck:
        raise BenchError("--compare-pytorch needs the checkpoints the folder was built from; "
                         "the manifest records none")
    model, _ = assemble(ModelChoice(m.name, m.sam2_version, m.image_size), adapters,
                        Path(ck["sam2"]["path"]) if "sam2" in ck else None,
                        Path(ck["adapter"]["path"]) if "adapter" in ck else None,
                        random_weights=m.random_weights, seed=m.seed or 0,
                        fewshot=manifest.kind != "sam2")
    fold_adapter_scale(model)
    return model.eval()


def _machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        import psutil

        mem = psutil.virtual_memory().total / 2 ** 30
    except ImportError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem, "platform": platform.platform(),
            "python": platform.python_version(), "hostname": platform.node()}


def _versions() -> dict:
    out = {}
    from importlib.metadata import PackageNotFoundError, version

    for mod in ("numpy", "onnxruntime", "onnxruntime-gpu", "tensorrt", "torch", "onnx", "matplotlib"):
        try:
            out[mod] = version(mod)
        except PackageNotFoundError:
            out[mod] = None
    return out


def reference_nets(model) -> Dict[str, object]:
    """The PyTorch reference sub-networks: the exported wrappers, but memory
    attention in sam2's order of operations (value projection not folded).

    Their FLOPs are the work every variant is rated on (sam2's computation).
    """
    from export.subnets import build_subnets

    return build_subnets(model, fold_values=False)


def measure_rounds(args, variants, frames, refs, masks, cases, nets, specs, model, peak) -> dict:
    """``--rounds`` rounds over every model folder (and the PyTorch reference),
    in reverse order every other round, so drift from a shared machine's load
    falls on every variant alike; samples are pooled per variant.

    The matmul peak is measured again after each round and the best is kept
    in ``peak["cpu"]`` (``peak["cpu_rounds"]``: all of them, showing the
    interference). ``variants``: :func:`engine_variants`. Returns
    ``{"engines": [pooled raw per variant], "pytorch": pooled raw or None}``.
    """
    from bench.peak import cpu_matmul_peak
    from bench.rss import RssSampler

    keys = list(range(len(variants))) + (["pytorch"] if args.compare_pytorch else [])
    rounds: Dict[object, List[dict]] = {k: [] for k in keys}
    peak["cpu_rounds"] = [peak["cpu"]]
    for i in range(args.rounds):
        for k in keys if i % 2 == 0 else keys[::-1]:
            what = ("pytorch reference" if k == "pytorch"
                    else f"{variants[k][0]} ({args.backend}, cpu-int8 {variants[k][2]})")
            print(f"[bench] round {i + 1}/{args.rounds}: {what} ...", flush=True)
            with RssSampler() as mem:
                raw = (collect_pytorch(args, frames, refs, masks, cases, nets, specs, model)
                       if k == "pytorch" else
                       collect_engines(variants[k][0], variants[k][1], args, frames, refs, masks,
                                       cases, cpu_int8=variants[k][2]))
            raw.update(mem.result())
            rounds[k].append(raw)
        peak["cpu_rounds"].append(cpu_matmul_peak(min(args.peak_size, 4096), threads=args.threads or None))
    peak["cpu"] = max(peak["cpu_rounds"], key=lambda p: p["gflops"])
    return {"engines": [pool_rounds(rounds[k]) for k in keys if k != "pytorch"],
            "pytorch": pool_rounds(rounds["pytorch"]) if args.compare_pytorch else None}


def _pytorch_side(m0):
    """The PyTorch reference model of ``m0`` (``--compare-pytorch``), or a clear error without torch."""
    try:
        import torch  # noqa: F401
        import export.assembly  # noqa: F401
    except ImportError as e:
        raise BenchError(f"--compare-pytorch needs the workstation side (torch, sam2, export/): {e}; "
                         "install it (scripts/install.sh) or drop --compare-pytorch") from e
    model = _model_for(m0)
    return model, reference_nets(model)


def stored_flops(manifest, cases) -> Dict[str, Dict[str, int]]:
    """``{"reference": {case: flops}, "export": {...}}`` for ``cases``, from the manifest
    (counted at export); cases the folder has no count for are left out."""
    out: Dict[str, Dict[str, int]] = {"reference": {}, "export": {}}
    for name, case in cases.items():
        key = case_key(case["stage"], clamp_axes(case, manifest.specs))
        for which in out:
            if key in manifest.flops.get(which, {}):
                out[which][name] = manifest.flops[which][key]
    return out


def run(args) -> dict:
    manifests = validate(args)
    from bench.peak import measure_peak

    m0 = manifests[0]
    size = m0.image_size
    specs = m0.specs
    peak = measure_peak(min(args.peak_size, 4096), threads=args.threads or None)
    model, nets = _pytorch_side(m0) if args.compare_pytorch else (None, None)
    cases = sam2_cases(args.shots_list)
    counted = stored_flops(m0, cases)
    flops, exported = counted["reference"], counted["export"]
    if flops:
        print("[flops] from the manifest: " + ", ".join(f"{k} {v / 1e9:.1f} GFLOP" for k, v in flops.items()),
              flush=True)
    else:
        print(f"[flops] {args.folders[0]} records no FLOPs (built before export counted them): "
              "GFLOP/s columns stay empty; rebuild it with export.build to get them", flush=True)
    imgs, masks = synthetic_images(size, max(args.shots_list) + 2, seed=0)
    refs, frames = imgs[:-2], imgs[-2:]
    if args.frame_hw:
        import cv2

        frames = [cv2.resize(f, args.frame_hw[::-1], interpolation=cv2.INTER_LINEAR) for f in frames]
    raw = measure_rounds(args, engine_variants(args, manifests), frames, refs, masks, cases, nets,
                         specs, model, peak)
    best = (peak["cuda"] or peak["cpu"])["gflops"] if args.backend == "tensorrt" else peak["cpu"]["gflops"]
    variants = [summarize_variant(r, cases, flops, best) for r in raw["engines"]]
    pt = summarize_variant(raw["pytorch"], cases, flops, peak["cpu"]["gflops"]) if args.compare_pytorch else None
    if pt:
        _attach_ratios(variants, pt)
    if len(variants) > 1:
        _attach_ratios(variants[1:], variants[0], "1st")
    settings = {"backend": args.backend, "threads": args.threads, "shots": args.shots_list,
                "batch": args.batch_list, "iterations": args.iterations, "warmup": args.warmup,
                "rounds": args.rounds, "cpu_int8": args.cpu_int8, "preprocess": args.preprocess,
                "postprocess": args.postprocess,
                "frame": list(frames[0].shape[1::-1]),
                "compare_pytorch": args.compare_pytorch, "folders": [str(d) for d in args.folders]}
    if args.compare_pytorch:
        import torch

        settings["torch_threads"] = torch.get_num_threads()
    return {
        "command": "python -m bench.throughput " + " ".join(shlex.quote(a) for a in args.argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": _machine(), "versions": _versions(), "settings": settings,
        "model": {"name": m0.model.name, "sam2_version": m0.model.sam2_version,
                  "image_size": m0.image_size, "kind": m0.kind},
        "peak": peak, "flops": flops, "flops_export": exported, "variants": variants, "pytorch": pt,
    }


def main(argv: Optional[List[str]] = None) -> int:
    from runtime.cli.common import run_main

    from bench.report import parsed_args

    args = parsed_args(parse_args, argv)

    def body():
        from bench.report import write_report

        paths = write_report(run(args), args.out)
        print(open(paths["md"]).read())
        print("wrote " + ", ".join(str(p) for p in paths.values()))

    return run_main(body, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
