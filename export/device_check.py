"""One check for a machine with an NVIDIA GPU and TensorRT: real engines against ONNX Runtime FP32.

    python -m export.device_check [--out DIR] [--precisions fp32,fp16,int8] [--stock-precisions fp32,fp16]

It builds hiera-tiny folders at 256 px from seeded random weights (a few-shot
folder per ``--precisions``, a stock SAM2 folder per ``--stock-precisions``)
with ``python -m export.build``, TensorRT engines included, then runs the same
inputs through backend ``tensorrt`` and through ONNX Runtime's CPU provider on
the folder's FP32 files:

- ``FewShotSegmenter`` on synthetic episodes (references with masks, targets);
- ``ImagePredictor`` with click, two-click and box prompts;
- ``VideoTracker`` on a synthetic clip, a click and a box on frame 0.

Per stage it prints the worst relative L2 and cosine of the engine's outputs
against the FP32 ONNX file on the feeds the FP32 pipeline really gave that
stage, and the engine's median latency; per product the mean and worst mask
IoU. Gates (:mod:`runtime.core.compare`): FP32 engines (TF32 allowed)
``ENGINE_FP32_STAGE`` / ``ENGINE_FP32_END_TO_END``, FP16 and INT8 engines
``REDUCED_STAGE`` / ``REDUCED_END_TO_END``.

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
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from calib.record import RecordingRunner
from runtime.core import compare
from runtime.core.fileio import write_json_atomic
from runtime.core.session import EngineSession, Product
from runtime.errors import Sam2EdgeError

NO_DEVICE = 4
SIZE = 256
PRECISIONS = ("fp32", "fp16", "int8")
Masks = List[np.ndarray]


# ---------------------------------------------------------------------- inputs
def clip(num_frames: int = 8, size: int = SIZE, seed: int = 0) -> List[np.ndarray]:
    """A synthetic video: a red disc moving right and a green diamond moving down over noise."""
    frames = []
    yy, xx = np.mgrid[:size, :size]
    for t in range(num_frames):
        rng = np.random.default_rng(seed + t)
        img = (rng.random((size, size, 3)) * 40 + 60).astype(np.uint8)
        img[(yy - 80) ** 2 + (xx - 60 - 3 * t) ** 2 < 30 ** 2] = (220, 40, 40)
        img[np.abs(yy - 60 - 3 * t) + np.abs(xx - 180) < 25] = (30, 200, 60)
        frames.append(img)
    return frames


def run_fewshot(product) -> Masks:
    from calib.episodes import generate_episodes
    from calib.record import run_episode

    return [logits > 0 for ep in generate_episodes(3, SIZE, refs=2, targets=2, seed=1)
            for logits in run_episode(product, ep)]


PROMPTS = [dict(points=[[60, 80]], labels=[1]), dict(points=[[60, 80], [180, 60]], labels=[1, 0]),
           dict(box=[150, 30, 210, 90])]


def run_predictor(product) -> Masks:
    product.set_image(clip(1)[0])
    out = []
    for p in PROMPTS:
        masks, _, _ = product.predict(**{k: np.asarray(v, np.float32) for k, v in p.items()}, multimask=True)
        out.extend(masks)
    return out


def run_tracker(product) -> Masks:
    frames = clip()
    product.add_prompt(0, 1, frames[0], points=[[60, 80]], labels=[1])
    product.add_prompt(0, 2, frames[0], box=[150, 30, 210, 90])
    return [f[o].mask for f in product.propagate(frames) for o in (1, 2)]


# ------------------------------------------------------------------ measuring
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


def check_folder(path: Path, product_cls: type, workloads: Sequence[Tuple[str, Callable[[Product], Masks]]],
                 precision: str, log: Callable[[str], None], backend: str = "tensorrt") -> Dict[str, Any]:
    """Every workload on ``backend`` and on ONNX Runtime FP32 (CPU): per-stage and end-to-end figures."""
    stage_gate, mask_gate = ((compare.ENGINE_FP32_STAGE, compare.ENGINE_FP32_END_TO_END) if precision == "fp32"
                             else (compare.REDUCED_STAGE, compare.REDUCED_END_TO_END))
    fp32 = EngineSession.open(path, product=product_cls.__name__, backend="onnxruntime",
                              providers=["CPUExecutionProvider"], cpu_int8="off")
    trt = EngineSession.open(path, product=product_cls.__name__, backend=backend)
    result: Dict[str, Any] = {"folder": str(path), "precision": precision, "stages": {}, "products": {},
                              "failures": []}
    try:
        samples: Dict[str, List[Dict[str, np.ndarray]]] = {s: [] for s in fp32.runners}
        for name, run in workloads:
            with fp32.wrapped(lambda s, r: RecordingRunner(r, samples[s])), product_cls(fp32) as product:
                ref = run(product)
            with product_cls(trt) as product:
                got = run(product)
            ious = [compare.mask_iou(g, r) for g, r in zip(got, ref)]
            mean, low = float(np.mean(ious)), float(np.min(ious))
            fg = float(np.mean([r.mean() for r in ref]))
            result["products"][name] = {"mean_iou": mean, "worst_iou": low, "masks": len(ious),
                                        "fp32_foreground": fg}
            bad = mask_gate.failures(mean, low)
            result["failures"] += [f"{name}: {b}" for b in bad]
            log(f"  {name:<17} mean IoU {mean:.4f}  worst {low:.4f}  over {len(ious)} masks "
                f"(FP32 foreground {fg:.1%}){'  FAIL' if bad else ''}")
        for stage, feeds in samples.items():
            if not feeds:
                continue
            m = compare.compare_runners(fp32.runners[stage], trt.runners[stage], feeds)
            ms = median_ms(trt.runners[stage], feeds[:4])
            bad = stage_gate.failures(m)
            result["stages"][stage] = {"rel_l2": m["rel_l2"], "cosine": m["cosine"], "samples": len(feeds),
                                       "median_ms": ms, "engine": trt.stage_files[stage]}
            result["failures"] += [f"{stage}: {b}" for b in bad]
            log(f"  {stage:<17} rel L2 {m['rel_l2']:.2e}  cosine {m['cosine']:.6f}  {ms:7.2f} ms  "
                f"({len(feeds)} feeds, {trt.stage_files[stage]}){'  FAIL' if bad else ''}")
    finally:
        trt.close()
        fp32.close()
    result["gates"] = {"stage": stage_gate.as_dict(), "end_to_end": mask_gate.as_dict()}
    return result


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
            if stock:
                from runtime.sam2.predictor import ImagePredictor
                from runtime.sam2.tracker import VideoTracker

                report["checks"].append(check_folder(folder, ImagePredictor, [("ImagePredictor", run_predictor)],
                                                     precision, print))
                report["checks"].append(check_folder(folder, VideoTracker, [("VideoTracker", run_tracker)],
                                                     precision, print))
            else:
                from runtime.sam2.fewshot import FewShotSegmenter

                report["checks"].append(check_folder(folder, FewShotSegmenter,
                                                     [("FewShotSegmenter", run_fewshot)], precision, print))
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
