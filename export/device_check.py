"""One check for a machine with an NVIDIA GPU and TensorRT: real engines against ONNX Runtime FP32.

    python -m export.device_check [--out DIR] [--precisions fp32,fp16,int8] [--stock-precisions fp32,fp16]

It builds hiera-tiny folders at 256 px from seeded random weights (a few-shot
folder per ``--precisions``, a stock SAM2 folder per ``--stock-precisions``)
with ``python -m export.build``, TensorRT engines included, then runs the same
inputs through backend ``tensorrt`` and through ONNX Runtime's CPU provider on
the folder's FP32 files (those with fused attention where the folder has
``cpu-fused`` files, as that provider runs them: within rel. L2 1e-5 of the
FP32 ones):

- few-shot folders: ``FewShotSegmenter`` on synthetic episodes (references
  with masks, targets);
- stock folders: ``ImagePredictor`` with a click, a box and both per object,
  and ``VideoTracker`` on a synthetic clip prompted with a box
  (:mod:`calib.workloads`, the same data the precision gates use); then the
  tracker over a 48-frame clip on TensorRT, whose GPU memory in use must not
  grow from frame 24 on (:func:`tracker_memory_growth`).

Per stage it prints the worst relative L2 and cosine of the engine's outputs
against the FP32 ONNX file on the feeds the FP32 pipeline really gave that
stage, and the engine's median latency; per product the mean and worst mask
IoU. Gates (:mod:`runtime.core.compare`): FP32 engines (TF32 allowed)
``ENGINE_FP32_STAGE`` / ``ENGINE_FP32_END_TO_END``, FP16 and INT8 engines
``REDUCED_STAGE`` / ``REDUCED_END_TO_END``; the edge graphs' engines
(preprocess, postprocess: FP32 at every precision, no GEMM) ``EDGE_PARITY``
against those graphs on ONNX Runtime (their masks ``EDGE_MASK_PARITY``).

Exit status: 0 every gate passed; 1 a gate failed or a build failed;
2 bad options; 4 (:data:`NO_DEVICE`) TensorRT or a CUDA GPU is missing here
(the message says which), nothing is built. A JSON report goes to
``OUT/device-check.json``. The tests marked ``tensorrt`` run it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from calib.record import RecordingRunner
from runtime.core import compare
from runtime.core.backends import EDGE_OPTIONS, edge_option
from runtime.core.fileio import write_json_atomic
from runtime.core.folder import ModelFolder
from runtime.core.session import EngineSession
from runtime.errors import Sam2EdgeError

NO_DEVICE = 4
SIZE = 256
PRECISIONS = ("fp32", "fp16", "int8")
MEMORY_FRAMES = 48  # the tracker's memory check: past its 16-frame window from frame 24 on
MEMORY_GROWTH_MIB = 2.0  # cudaMemGetInfo counts in 2 MiB pages


# ---------------------------------------------------------------------- inputs
def workload(kind: str):
    """The synthetic workload of a folder kind (:mod:`calib.workloads`): 3 few-shot episodes, or
    6 prompted images (click, box, both) and a tracking clip of 8 frames."""
    from calib.workloads import workload_for

    return workload_for(kind, None, SIZE, generated=3)


def median_ms(runner, samples: Sequence[Mapping[str, np.ndarray]], repeats: int = 5) -> float:
    """Median wall time of one ``infer`` (+ stream synchronise) over ``samples`` x ``repeats`` (1 warm-up)."""
    stream = getattr(runner, "stream", None)
    times = []
    for i in range(repeats + 1):
        for feeds in samples:
            t0 = time.perf_counter()
            runner.infer(feeds)
            if stream is not None:
                stream.synchronize()
            if i:
                times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times)) if times else float("nan")


def check_folder(path: Path, precision: str, log: Callable[[str], None], backend: str = "tensorrt",
                 edge_mode: str = "auto") -> Dict[str, Any]:
    """The folder kind's workload on ``backend`` (``edge_mode``: where its preprocess and postprocess
    graphs run, :meth:`EngineSession.open`) and on ONNX Runtime FP32 (CPU): per-stage and end-to-end figures."""
    stage_gate, mask_gate = ((compare.ENGINE_FP32_STAGE, compare.ENGINE_FP32_END_TO_END) if precision == "fp32"
                             else (compare.REDUCED_STAGE, compare.REDUCED_END_TO_END))
    folder = ModelFolder.read(path)
    kind = folder.manifest.kind
    work = workload(kind)
    edges = folder.manifest.edge_specs
    # The reference runs the edge graphs too (where the folder has them), so their engines are compared.
    ref_edges = {o: "backend" if any(edge_option(e) == o for e in edges) else "auto" for o in EDGE_OPTIONS}
    fp32 = EngineSession.open(path, kinds=(kind,), backend="onnxruntime", providers=["CPUExecutionProvider"],
                              cpu_int8="off", **ref_edges)
    trt = EngineSession.open(path, kinds=(kind,), backend=backend, preprocess=edge_mode, postprocess=edge_mode)
    result: Dict[str, Any] = {"folder": str(path), "precision": precision, "stages": {}, "products": {},
                              "failures": []}
    try:
        samples: Dict[str, List[Dict[str, np.ndarray]]] = {s: [] for s in fp32.runners}
        with fp32.wrapped(lambda s, r: RecordingRunner(r, samples[s])):
            ref = [x > 0 for x in work.run(fp32)]
        got = [x > 0 for x in work.run(trt)]
        ious = [compare.mask_iou(g, r) for g, r in zip(got, ref)]
        mean, low = float(np.mean(ious)), float(np.min(ious))
        fg = float(np.mean([r.mean() for r in ref]))
        name = {"sam2-fewshot": "FewShotSegmenter"}.get(kind, "ImagePredictor + VideoTracker")
        result["products"][name] = {"mean_iou": mean, "worst_iou": low, "masks": len(ious), "fp32_foreground": fg}
        bad = mask_gate.failures(mean, low)
        result["failures"] += [f"{name}: {b}" for b in bad]
        log(f"  {name:<17} mean IoU {mean:.4f}  worst {low:.4f}  over {len(ious)} masks "
            f"(FP32 foreground {fg:.1%}){'  FAIL' if bad else ''}")
        for stage, feeds in samples.items():
            if not feeds:
                continue
            if stage not in trt.runners:  # an edge stage whose engine was not built: the host did it
                why = folder.manifest.tensorrt.get("edge_failures", {}).get(stage, "no engine")
                result["stages"][stage] = {"engine": None, "host": why}
                log(f"  {stage:<17} no engine, done on the host ({why})")
                continue
            m = compare.compare_runners(fp32.runners[stage], trt.runners[stage], feeds)
            ms = median_ms(trt.runners[stage], feeds[:4])
            bad = edge_failures(edges[stage], m) if stage in edges else stage_gate.failures(m)
            result["stages"][stage] = {"rel_l2": m["rel_l2"], "cosine": m["cosine"], "samples": len(feeds),
                                       "median_ms": ms, "engine": trt.stage_files[stage]}
            result["failures"] += [f"{stage}: {b}" for b in bad]
            log(f"  {stage:<17} rel L2 {m['rel_l2']:.2e}  cosine {m['cosine']:.6f}  {ms:7.2f} ms  "
                f"({len(feeds)} feeds, {trt.stage_files[stage]}){'  FAIL' if bad else ''}")
        if kind == "sam2" and trt.backend == "tensorrt":
            grown = tracker_memory_growth(trt)
            result["tracker_memory"] = grown
            leak = grown["growth_mib"] > MEMORY_GROWTH_MIB
            if leak:
                result["failures"].append(f"VideoTracker: GPU memory grew {grown['growth_mib']:.1f} MiB from frame "
                                          f"{grown['from_frame']} to {grown['frames']} (at most {MEMORY_GROWTH_MIB})")
            log(f"  {'tracker memory':<17} GPU memory {grown['growth_mib']:+.1f} MiB from frame {grown['from_frame']} "
                f"to {grown['frames']}{'  FAIL' if leak else ''}")
    finally:
        trt.close()
        fp32.close()
    result["gates"] = {"stage": stage_gate.as_dict(), "end_to_end": mask_gate.as_dict(),
                       "edge_stage": compare.EDGE_PARITY.as_dict(), "edge_masks": compare.EDGE_MASK_PARITY.as_dict()}
    return result


def tracker_memory_growth(session, frames: int = MEMORY_FRAMES) -> Dict[str, float]:
    """GPU memory a ``VideoTracker`` on ``session`` gains over a clip of ``frames`` frames, MiB, between
    its middle and its end (past sam2's tracking window, so its memory bank no longer grows: what it
    gains there is a leak: a frame's uploads held beyond the frame). Every process on the GPU counts
    (``cudaMemGetInfo``), so run it on a quiet device."""
    from calib.workloads import box_of, generate_clips
    from runtime.core.backends import cuda
    from runtime.sam2.tracker import VideoTracker

    clip = generate_clips(1, session.manifest.model_config["image_size"], frames, seed=1)[0]
    tracker = VideoTracker(session, return_logits=False)
    tracker.add_prompt(0, 1, clip.frames[0], box=box_of(clip.first_mask))
    used = {}
    for out in tracker.propagate(clip.frames):
        if out.frame_idx + 1 in (frames // 2, frames):
            used[out.frame_idx + 1] = cuda.device_memory_in_use() / 2 ** 20
    tracker.close()
    return {"frames": frames, "from_frame": frames // 2, "growth_mib": used[frames] - used[frames // 2]}


def edge_failures(spec, m: Mapping[str, Any]) -> List[str]:
    """An edge graph's engine against the graph (:func:`compare.compare_runners` figures ``m``): FP32
    arithmetic without GEMMs at every precision, so its values are held to the exact gate, its bool
    outputs (masks, where values at the threshold may round either way) to the mask gate."""
    bad = []
    for name, figures in m["outputs"].items():
        gate = compare.EDGE_MASK_PARITY if spec.output(name).dtype == "bool" else compare.EDGE_PARITY
        bad += [f"{name}: {b}" for b in gate.failures(figures)]
    return bad


# ---------------------------------------------------------------------- builds
def build_folder(out: Path, precision: str, stock: bool, log: Callable[[str], None]) -> Path:
    """A tiny 256 px folder with engines, built by ``python -m export.build`` (random weights)."""
    from export.build import main as build_main

    args = ["--model", "tiny", "--image-size", str(SIZE), "--precision", precision, "--out", str(out)]
    if stock:
        from export.assembly import write_random_checkpoints
        from export.models import ModelChoice

        ckpt, _ = write_random_checkpoints(ModelChoice("tiny", "2.1", SIZE), out.parent / "checkpoints",
                                           adapters=None, seed=0, object_score_bias=2.0)
        args += ["--stock-sam2", "--no-adapters", "--sam2-checkpoint", str(ckpt)]
    else:
        args += ["--random-weights"]
    log(f"[build] python -m export.build {' '.join(args)}")
    rc = build_main(args)
    if rc != 0:
        raise Sam2EdgeError(f"export.build exited {rc} for {out.name} (its messages are above)")
    return out


def _precisions(text: str) -> List[str]:
    items = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in items if p not in PRECISIONS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown precision(s) {bad}; choose from {', '.join(PRECISIONS)}")
    return items


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export.device_check",
        description="Build tiny 256 px engines with TensorRT on this GPU and check them against ONNX Runtime "
                    "FP32: per-stage rel. L2 / cosine / latency, end-to-end mask IoU of FewShotSegmenter, "
                    "ImagePredictor and VideoTracker. Exit 0 pass, 1 fail, 4 no TensorRT or GPU here.")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for the built model folders and device-check.json (default: a temporary one)")
    p.add_argument("--precisions", type=_precisions, default=list(PRECISIONS),
                   help="few-shot folders to build and check (default: fp32,fp16,int8)")
    p.add_argument("--stock-precisions", type=_precisions, default=["fp32", "fp16"],
                   help="stock SAM2 folders (ImagePredictor, VideoTracker) to build and check "
                        "(default: fp32,fp16)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from export.trt_build import tensorrt_status
    from runtime.cli.common import run_main

    args = build_parser().parse_args(argv)
    ok, why = tensorrt_status()
    if not ok:
        print(f"device check not run: it needs TensorRT and a CUDA GPU here: {why}", file=sys.stderr)
        return NO_DEVICE

    def body() -> int:
        out = args.out or Path(tempfile.mkdtemp(prefix="sam2edge-device-check-"))
        out.mkdir(parents=True, exist_ok=True)
        report: Dict[str, Any] = {"tensorrt": why, "checks": []}
        start = time.perf_counter()
        plan = [(p, False) for p in args.precisions] + [(p, True) for p in args.stock_precisions]
        for precision, stock in plan:
            name = f"{'stock' if stock else 'fewshot'}-{precision}"
            folder = build_folder(out / name, precision, stock, print)
            print(f"[check] {name}: TensorRT vs ONNX Runtime FP32")
            report["checks"].append(check_folder(folder, precision, print))
        report["seconds"] = round(time.perf_counter() - start, 1)
        failures = [f"{c['folder']}: {f}" for c in report["checks"] for f in c["failures"]]
        report["failures"] = failures
        write_json_atomic(out / "device-check.json", report)
        print(f"[done] {len(report['checks'])} checks in {report['seconds']} s; report {out / 'device-check.json'}")
        for f in failures:
            print(f"FAIL {f}", file=sys.stderr)
        return 1 if failures else 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
