"""``python -m export.build --model sam2-unet|sam2-unext|features``: dense models and feature engines.

Same toolchain as the few-shot build (:mod:`export.build`): each part is
exported to ONNX (opset 17, dynamic batch), verified against the PyTorch module
in ONNX Runtime (fp32 gate ``FP32_PARITY_GATE`` on the relative L2 of every
output, batch 1 and 2), the chained parts are checked end to end against the
whole PyTorch model (logits and probability map), FP16 error is measured with
the engines' FP16 policy (``calib.fp16``: normalisation pinned to FP32,
emulated in ONNX Runtime), TensorRT engines are built where TensorRT and a GPU
are present, and ``manifest.json`` is written last, atomically. Re-running with
unchanged inputs reuses the parts whose files still match (``--force``
rebuilds).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Mapping, Optional

import numpy as np

from export.models import MODEL_NAMES, SAM2_VERSIONS
from runtime.dense_spec import KINDS, LOGITS, part_names
from runtime.fileio import sha256_file, write_json_atomic
from runtime.manifest import FORMAT_VERSION, MANIFEST_NAME

DENSE_CODE_VERSION = 1  # bump when the exported graphs change meaning
LOADERS = {"sam2-unet": "runtime.dense.DenseSegmenter", "sam2-unext": "runtime.dense.DenseSegmenter",
           "features": "runtime.features.FeatureExtractor"}
# FP16 policy gate (emulated FP16 vs FP32, same inputs): dense models on the
# probability map, feature engines on every output's relative L2.
FP16_PROB_GATE = 0.02
FP16_IOU_GATE = 0.98
FP16_FEATURE_GATE = 1e-2


def wants_dense(argv: List[str]) -> bool:
    """True when ``argv`` asks ``export.build`` for one of this module's models."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--model")
    known, _ = p.parse_known_args(argv)
    return known.model in KINDS


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m export.build --model {sam2-unet,sam2-unext,features}",
        description=(
            "Export SAM2-UNet / SAM2-UNeXT (dense binary segmentation, logits at the input "
            "size) or SAM2's encoder features to ONNX, verify against PyTorch, measure FP16 "
            "error, build TensorRT engines where possible, write OUT/manifest.json."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", required=True, choices=KINDS)
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp16",
                   help="engine precision (fp16 keeps normalisation layers in fp32); int8 is not "
                        "supported for these models")
    p.add_argument("--trunk", choices=MODEL_NAMES, default=None,
                   help="Hiera size (default: large for sam2-unet/unext as the authors, tiny for features)")
    p.add_argument("--sam2-version", choices=SAM2_VERSIONS, default=None,
                   help="SAM2 config family of the trunk (default 2.0 for sam2-unet/unext, 2.1 for features)")
    p.add_argument("--image-size", type=int, default=None,
                   help="square input size, multiple of 32 (default 352 sam2-unet, 1024 sam2-unext/features)")
    p.add_argument("--dino-config", choices=("large", "tiny"), default="large",
                   help="sam2-unext: DINOv2 ViT (large = timm vit_large_patch14_dinov2; tiny = a "
                        "2-block test ViT of the same structure)")
    p.add_argument("--dino-size", type=int, default=None,
                   help="sam2-unext: DINOv2 input size (multiple of 14; default 448 as the authors)")
    p.add_argument("--fpn", action="store_true", help="features: also export the FPN neck outputs")
    p.add_argument("--split", action="store_true",
                   help="sam2-unet/unext: export encoder(s) and decoder as separate engines "
                        "(per-part precision with --fp32-parts)")
    p.add_argument("--fp32-parts", default="",
                   help="with --split and --precision fp16: comma-separated parts kept fp32 "
                        "(e.g. dino_encoder)")
    p.add_argument("--checkpoint", "--sam2-checkpoint", dest="checkpoint", type=Path,
                   help="trained model file in the authors' layout (features: an official SAM2 checkpoint)")
    p.add_argument("--random-weights", action="store_true",
                   help="seeded random weights instead of a checkpoint (outputs are meaningless)")
    p.add_argument("--seed", type=int, default=0, help="seed for --random-weights")
    p.add_argument("--allow-key-mismatch", action="store_true",
                   help="load the checkpoint even when keys are missing or unexpected")
    p.add_argument("--max-batch", type=int, default=4, help="largest batch of the engines")
    p.add_argument("--no-fp16-check", action="store_true",
                   help="skip measuring the FP16 policy's error (fp16 builds)")
    p.add_argument("--no-fp32-norm", action="store_true",
                   help="let TensorRT run normalisation layers in fp16 (not recommended)")
    p.add_argument("--skip-tensorrt", action="store_true", help="export and verify ONNX only")
    p.add_argument("--force", action="store_true", help="rebuild every part even if up to date")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default engines/<model>-<trunk>-<size>-<precision>)")
    return p.parse_args(argv)


def _choice(args):
    from export.dense.dinov2 import DinoConfig
    from export.dense.models import DINO_CONFIGS, DenseChoice

    dino = None
    if args.model == "sam2-unext":
        base = DINO_CONFIGS[args.dino_config]
        size = args.dino_size or base.img_size
        dino = DinoConfig(**{**base.__dict__, "img_size": size})
    elif args.dino_size or args.dino_config != "large":
        raise ValueError("--dino-config/--dino-size only apply to --model sam2-unext")
    kw = {k: v for k, v in (("trunk", args.trunk), ("sam2_version", args.sam2_version),
                            ("image_size", args.image_size)) if v is not None}
    return DenseChoice.default(args.model, dino=dino, fpn=args.fpn, split=args.split, **kw)


def _part_precisions(args, parts) -> Dict[str, str]:
    fp32 = [p for p in args.fp32_parts.split(",") if p.strip()]
    if fp32 and not args.split:
        raise ValueError("--fp32-parts needs --split (a single engine has one precision)")
    if fp32 and args.precision != "fp16":
        raise ValueError("--fp32-parts only makes sense with --precision fp16")
    bad = [p for p in fp32 if p not in parts]
    if bad:
        raise ValueError(f"--fp32-parts {bad}: no such part; this build has {list(parts)}")
    return {p: ("fp32" if p in fp32 else args.precision) for p in parts}


def _fingerprint(args, choice, ckpt_hash) -> str:
    desc = {"code": DENSE_CODE_VERSION, "choice": choice.describe(), "ckpt": ckpt_hash,
            "random": [args.random_weights, args.seed if args.random_weights else None],
            "max_batch": args.max_batch}
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]


def parity_batches(max_batch: int) -> List[Dict[str, int]]:
    return [{"batch": 1}] + ([{"batch": 2}] if max_batch >= 2 else [])


def test_images(size: int, count: int = 2, seed: int = 0) -> np.ndarray:
    """``[count,3,S,S]`` in [0,1]: uniform noise, then smooth gradients with a disc (deterministic)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / float(size)
    out = []
    for i in range(count):
        if i % 2 == 0:
            img = rng.random((3, size, size))
        else:
            cy, cx, r = rng.uniform(0.3, 0.7, 3) * (1, 1, 0.5)
            disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2).astype(float)
            img = np.stack([0.5 * xx + 0.4 * disc, 0.5 * yy + 0.2 * disc, 0.3 + 0.3 * disc])
        out.append(img)
    return np.clip(np.stack(out), 0, 1).astype(np.float32)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def compare_chain(got: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray], kind: str) -> dict:
    """Errors of ``got`` vs ``ref`` over the final outputs: logits + probability map, or features."""
    from export.onnx_export import compare_outputs

    per = compare_outputs(got, ref)
    rec = {"rel_l2": max(v["rel_l2"] for v in per.values()),
           "max_abs": max(v["max_abs"] for v in per.values())}
    if kind == "features":
        rec["outputs"] = per
        rec["min_cosine"] = min(
            float(np.sum(g * r) / (np.linalg.norm(g) * np.linalg.norm(r) + 1e-30))
            for g, r in ((np.asarray(got[k], np.float64).ravel(), np.asarray(v, np.float64).ravel())
                         for k, v in ref.items()))
        return rec
    pg, pr = _sigmoid(got[LOGITS]), _sigmoid(ref[LOGITS])
    mg, mr = pg > 0.5, pr > 0.5
    union = np.logical_or(mg, mr).sum()
    rec.update(prob_max_abs=float(np.abs(pg - pr).max()),
               prob_mean_abs=float(np.abs(pg - pr).mean()),
               mask_iou=float(np.logical_and(mg, mr).sum() / union) if union else 1.0)
    return rec


def _torch_final(full_net, images: np.ndarray, output_names) -> Dict[str, np.ndarray]:
    import torch

    with torch.no_grad():
        outs = full_net(torch.from_numpy(images))
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    return {n: o.numpy() for n, o in zip(output_names, outs)}


def _final_names(specs) -> List[str]:
    consumed = {t.name for sp in specs.values() for t in sp.inputs}
    return [t.name for sp in specs.values() for t in sp.outputs if t.name not in consumed]


def main(argv: Optional[List[str]] = None) -> int:
    from export.build import FP32_PARITY_GATE, _fail, _log, _previous_manifest, _versions

    args = parse_args(argv)
    if args.precision == "int8":
        _fail("--precision int8 is not supported for sam2-unet/sam2-unext/features (no calibration "
              "or accuracy gate for them yet); use fp16 or fp32")
    if args.max_batch < 1:
        _fail("--max-batch must be >= 1")
    try:
        choice = _choice(args)
        precisions = _part_precisions(args, part_names(choice.kind, choice.split))
    except ValueError as e:
        _fail(str(e))
    from export.checkpoints import CheckpointError
    from export.dense.models import (assemble_dense, export_nets, model_config, reference_net,
                                     specs as make_specs)

    if args.random_weights and args.checkpoint:
        _fail("--random-weights and --checkpoint exclude each other; pass one")
    out = args.out or Path("engines") / f"{choice.kind}-{choice.trunk}-{choice.image_size}-{args.precision}"
    if out.exists() and not out.is_dir():
        _fail(f"--out {str(out)!r} exists and is not a folder")
    if args.random_weights:
        _log("!" * 72 + "\n!! --random-weights: the model has RANDOM weights; the engines run and are "
             "verified,\n!! but their outputs mean nothing. Pass --checkpoint for real use.\n" + "!" * 72)
    _log(f"[model] {choice.kind}: Hiera {choice.trunk} (SAM{choice.sam2_version} config) at "
         f"{choice.image_size}px" + (f", DINOv2 {args.dino_config} at {choice.dino.img_size}px"
                                     if choice.dino else "")
         + (", with FPN" if choice.fpn else "") + (", split" if choice.split else ""))
    t0 = time.time()
    try:
        model, report = assemble_dense(choice, args.checkpoint, args.random_weights, args.seed,
                                       args.allow_key_mismatch)
    except (CheckpointError, ValueError) as e:
        _fail(str(e))
    if report.unused_other_modules:
        _log(f"[model] {report.unused_other_modules} checkpoint tensors outside the image encoder "
             "are unused (memory, decoder)")
    _log(f"[model] assembled in {time.time() - t0:.1f}s")

    nets = export_nets(model, choice)
    specs = make_specs(model, choice, args.max_batch)
    ckpt_hash = sha256_file(args.checkpoint) if args.checkpoint else None
    fingerprint = _fingerprint(args, choice, ckpt_hash)
    out.mkdir(parents=True, exist_ok=True)
    previous = _previous_manifest(out)
    same_inputs = previous.get("fingerprint") == fingerprint and not args.force

    from export.onnx_export import check_parity, export_onnx

    records: Dict[str, dict] = {}
    n = len(specs)
    for i, (name, spec) in enumerate(specs.items(), 1):
        path = out / f"{name}.onnx"
        prev = previous.get("stages", {}).get(name, {}) if same_inputs else {}
        prev_onnx = prev.get("onnx") or {}
        if prev_onnx and path.is_file() and sha256_file(path) == prev_onnx.get("sha256"):
            _log(f"[{i}/{n}] {name}: up to date, reusing {path.name}")
            records[name] = {"onnx": prev_onnx, "parity": prev["parity"], "precision": precisions[name]}
            continue
        t = time.time()
        _log(f"[{i}/{n}] {name}: exporting ONNX (opset 17) ...")
        try:
            export_onnx(nets[name], spec, path, axes={"batch": min(2, args.max_batch)})
        except ValueError as e:  # onnx.checker on a > 2 GB protobuf
            if "2GB" not in str(e):
                raise
            _fail(f"{name}: the graph is larger than ONNX's 2 GB protobuf limit at these settings; "
                  "export it in parts with --split")
        _log(f"[{i}/{n}] {name}: exported in {time.time() - t:.1f}s; verifying in ONNX Runtime ...")
        parity = check_parity(nets[name], spec, path, parity_batches(args.max_batch))
        ok = parity["rel_l2"] <= FP32_PARITY_GATE
        _log(f"[{i}/{n}] {name}: rel L2 {parity['rel_l2']:.2e}, max abs {parity['max_abs']:.2e} "
             f"(gate {FP32_PARITY_GATE:.0e}) {'ok' if ok else 'FAILED'}")
        records[name] = {
            "onnx": {"file": path.name, "sha256": sha256_file(path), "precision": "fp32"},
            "precision": precisions[name],
            "parity": {"rel_l2": parity["rel_l2"], "max_abs": parity["max_abs"],
                       "gate": FP32_PARITY_GATE, "passed": ok,
                       "cases": [{"axes": c["axes"], **c["outputs"]} for c in parity["cases"]]},
        }

    # End to end: the chained ONNX parts vs the whole PyTorch model, same images.
    from runtime.backends.onnxruntime import OnnxRuntimeStageRunner
    from runtime.dense import run_parts

    images = test_images(choice.image_size)
    final = _final_names(specs)
    ref = _torch_final(reference_net(model, choice), images, final)
    runners = {k: OnnxRuntimeStageRunner(sp, out / records[k]["onnx"]["file"],
                                         providers=["CPUExecutionProvider"]).activate()
               for k, sp in specs.items()}
    fp32_out = {k: v for k, v in run_parts(runners, specs, {"image": images}).items() if k in final}
    e2e = compare_chain(fp32_out, ref, choice.kind)
    e2e["passed"] = e2e["rel_l2"] <= FP32_PARITY_GATE
    _log(f"[check] end to end vs PyTorch ({len(images)} images): rel L2 {e2e['rel_l2']:.2e}"
         + (f", probability max abs {e2e['prob_max_abs']:.2e}" if "prob_max_abs" in e2e else "")
         + f" {'ok' if e2e['passed'] else 'FAILED'}")

    fp16 = None
    if "fp16" in precisions.values() and not args.no_fp16_check:
        fp16 = measure_fp16(specs, records, precisions, out, runners, images, fp32_out, choice.kind, _log)
    for r in runners.values():
        r.deactivate()

    manifest = {
        "format_version": FORMAT_VERSION,
        "status": "complete",
        "fingerprint": fingerprint,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "precision": args.precision,
        "loader": LOADERS[choice.kind],
        "model": {"kind": choice.kind, "name": choice.trunk, "trunk": choice.trunk,
                  "sam2_version": choice.sam2_version, "image_size": choice.image_size,
                  "split": choice.split, "fpn": choice.fpn,
                  "dino": choice.describe()["dino"], "dino_config": args.dino_config if choice.dino else None,
                  "parts": list(specs), "outputs": final,
                  "random_weights": args.random_weights,
                  "seed": args.seed if args.random_weights else None},
        "checkpoints": ({"model": {"path": str(args.checkpoint), "sha256": ckpt_hash}}
                        if args.checkpoint else {}),
        "unused_checkpoint_keys": report.unexpected,
        "versions": _versions(),
        "axis_ranges": {"batch": [1, 1, args.max_batch]},
        "model_config": model_config(model, choice),
        "preprocess": {"resize": "bilinear, antialiased (PIL-like), to image_size x image_size",
                       "uint8_rounding": True, "normalize": "ImageNet mean/std, inside the graph"},
        "postprocess": None if choice.kind == "features" else {
            "resize": "bilinear (align_corners=False) logits to the input image size",
            "activation": "sigmoid"},
        "stages": records,
        "end_to_end": e2e,
        "fp16": fp16,
    }
    failed = [k for k, r in records.items() if not r["parity"]["passed"]]
    if failed or not e2e["passed"]:
        manifest["status"] = "failed"
        manifest["status_reason"] = (f"fp32 parity above {FP32_PARITY_GATE} for "
                                     f"{failed or ['end to end']}")
    elif fp16 is not None and not fp16["passed"]:
        # As the int8 gate: a folder whose FP16 engines would miss the gate is refused.
        manifest["status"] = "failed"
        manifest["status_reason"] = f"FP16 policy outside its gate ({fp16['gate']}); {fp16['suggestion']}"

    from export.engines import build_engines

    manifest["tensorrt"] = _build_engines(out, specs, records, precisions, args,
                                          previous if same_inputs else {}, _log, build_engines)
    write_json_atomic(out / MANIFEST_NAME, manifest)
    _log(f"[done] {out}/{MANIFEST_NAME} ({manifest['status']}) in {time.time() - t0:.1f}s")
    return 0 if manifest["status"] == "complete" else 1


def _build_engines(out, specs, records, precisions, args, previous, log, build_engines) -> dict:
    """One ``build_engines`` call per precision (parts may differ with --split --fp32-parts)."""
    info: dict = {}
    for prec in sorted(set(precisions.values())):
        group = {k: sp for k, sp in specs.items() if precisions[k] == prec}
        ns = SimpleNamespace(skip_tensorrt=args.skip_tensorrt, precision=prec,
                             no_fp32_norm=args.no_fp32_norm)
        res = build_engines(out, group, records, ns, previous, log)
        engines = {**info.get("engines", {}), **res.get("engines", {})}
        info.update(res)
        if engines:
            info["engines"] = engines
        if not res.get("built"):
            break
    return info


def measure_fp16(specs, records, precisions, out: Path, fp32_runners, images, fp32_out, kind, log) -> dict:
    """Error of the FP16 policy (emulated) against the FP32 ONNX chain, same images."""
    from calib.fp16 import fp16_runner

    t = time.time()
    log("[fp16] measuring the FP16 policy (normalisation in FP32; emulated in ONNX Runtime) ...")
    with tempfile.TemporaryDirectory(prefix="fp16-", dir=out) as work:
        runners = {}
        for k, sp in specs.items():
            if precisions[k] == "fp16":
                runners[k] = fp16_runner(sp, out / records[k]["onnx"]["file"], work, mode="emulated")
            else:
                runners[k] = fp32_runners[k]
        modes = {k: getattr(r, "fp16_mode", "fp32") for k, r in runners.items()}
        from runtime.dense import run_parts

        got = {k: v for k, v in run_parts(runners, specs, {"image": images}).items() if k in fp32_out}
        for k, r in runners.items():
            if precisions[k] == "fp16":
                r.deactivate()
    rec = compare_chain(got, fp32_out, kind)
    if kind == "features":
        rec["gate"] = {"rel_l2": FP16_FEATURE_GATE}
        rec["passed"] = rec["rel_l2"] <= FP16_FEATURE_GATE
        summary = f"worst rel L2 {rec['rel_l2']:.2e}, min cosine {rec['min_cosine']:.5f}"
    else:
        rec["gate"] = {"prob_max_abs": FP16_PROB_GATE, "mask_iou": FP16_IOU_GATE}
        rec["passed"] = rec["prob_max_abs"] <= FP16_PROB_GATE and rec["mask_iou"] >= FP16_IOU_GATE
        summary = (f"logits rel L2 {rec['rel_l2']:.2e}, probability max abs {rec['prob_max_abs']:.2e} "
                   f"(mean {rec['prob_mean_abs']:.1e}), mask IoU {rec['mask_iou']:.4f}")
    rec.update(policy="fp16 with LayerNorm/reductions/Pow/Sqrt in fp32 (calib.fp16, as the engines)",
               modes=modes, parts=precisions, images=int(len(images)))
    log(f"[fp16] {summary} vs fp32 ({'within' if rec['passed'] else 'OUTSIDE'} the gate) "
        f"in {time.time() - t:.0f}s")
    if not rec["passed"]:
        rec["suggestion"] = _fp16_suggestion(specs, records, precisions, out, fp32_runners, images,
                                             fp32_out, kind)
        log(f"[fp16] GATE FAILED: {rec['suggestion']}")
    return rec


def _fp16_suggestion(specs, records, precisions, out, fp32_runners, images, fp32_out, kind) -> str:
    """Which setting to rebuild with: for split builds, the fp16 part that alone loses the most."""
    fp16_parts = [k for k, p in precisions.items() if p == "fp16"]
    if len(specs) == 1:
        return ("rebuild with --precision fp32" + ("" if kind == "features" else
                ", or with --split and --fp32-parts for the encoder that loses the most"))
    from calib.fp16 import fp16_runner
    from runtime.dense import run_parts

    worst, key = {}, "rel_l2" if kind == "features" else "prob_max_abs"
    with tempfile.TemporaryDirectory(prefix="fp16-", dir=out) as work:
        for k in fp16_parts:
            r = fp16_runner(specs[k], out / records[k]["onnx"]["file"], work, mode="emulated")
            got = run_parts({**fp32_runners, k: r}, specs, {"image": images})
            r.deactivate()
            worst[k] = compare_chain({n: got[n] for n in fp32_out}, fp32_out, kind)[key]
    k = max(worst, key=worst.get)
    keep = sorted({p for p, v in precisions.items() if v == "fp32"} | {k})
    return (f"alone in fp16, {', '.join(f'{p} gives {key} {v:.2e}' for p, v in worst.items())}: "
            f"rebuild with --split --fp32-parts {','.join(keep)} (or --precision fp32)")


if __name__ == "__main__":
    sys.exit(main())
