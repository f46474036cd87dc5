"""The dense builder: SAM2-UNet / SAM2-UNeXT dense segmentation and SAM2 encoder-feature folders.

Same toolchain and folder as the SAM2 builder (:mod:`export.sam2_build`):
each part is exported to ONNX (opset 17, dynamic batch) and verified against
the PyTorch module in ONNX Runtime (:data:`runtime.core.compare.FP32_PARITY`
on every output, batch 1 and 2); the chained parts are checked end to end
against the whole PyTorch model (logits and probability map); the FP16
error is measured with the engines' FP16 policy (``calib.fp16``); TensorRT
engines are built where TensorRT and a GPU are present; the manifest is
written last, atomically. Re-running with unchanged inputs reuses the parts
whose files still match (``--force`` rebuilds).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Mapping

import numpy as np

from export.options import (BuildOptions, Log, banner_random_weights, finish, fingerprint, now, prepare_out,
                            versions)
from runtime.core.compare import DENSE_FP16, FEATURES_FP16, FP32_PARITY, compare_outputs, mask_iou, worst
from runtime.core.fileio import sha256_file
from runtime.core.folder import FileRecord, Manifest, ModelFolder, ModelRecord, onnx_name
from runtime.dense.spec import LOGITS, PIL_FILTER, dense_edge_specs, part_names
from runtime.errors import UsageError

DENSE_CODE_VERSION = 2  # bump when the exported graphs change meaning
SAM2_ONLY = ("sam2_checkpoint", "adapter_checkpoint", "no_adapters", "adapter_stages",
             "channel_factor", "stock_sam2", "max_prompt_frames", "int8_stages", "cpu_int8_stages", "cpu_int8_range",
             "calib_method", "plain_export", "max_objects", "no_cpu_fused")


def _choice(args: BuildOptions):
    from export.dense.dinov2 import DinoConfig
    from export.dense.models import DINO_CONFIGS, DenseChoice

    dino = None
    if args.model == "sam2-unext":
        base = DINO_CONFIGS[args.dino_config]
        size = args.dino_size or base.img_size
        dino = DinoConfig(**{**base.__dict__, "img_size": size})
    elif args.dino_size or args.dino_config != "large":
        raise UsageError("--dino-config/--dino-size only apply to --model sam2-unext")
    kw = {k: v for k, v in (("trunk", args.trunk), ("sam2_version", args.sam2_version),
                            ("image_size", args.image_size)) if v is not None}
    return DenseChoice.default(args.model, dino=dino, fpn=args.fpn, split=args.split, **kw)


def _part_precisions(args: BuildOptions, parts) -> Dict[str, str]:
    fp32 = [p for p in args.fp32_parts.split(",") if p.strip()]
    if fp32 and not args.split:
        raise UsageError("--fp32-parts needs --split (a single engine has one precision)")
    if fp32 and args.precision != "fp16":
        raise UsageError("--fp32-parts only makes sense with --precision fp16")
    bad = [p for p in fp32 if p not in parts]
    if bad:
        raise UsageError(f"--fp32-parts {bad}: no such part; this build has {list(parts)}")
    return {p: ("fp32" if p in fp32 else args.precision) for p in parts}


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
    per = compare_outputs(got, ref)
    rec = dict(worst(per.values()))
    if kind == "features":
        rec["outputs"] = per
        rec["min_cosine"] = rec["cosine"]
        return rec
    pg, pr = _sigmoid(got[LOGITS]), _sigmoid(ref[LOGITS])
    rec.update(prob_max_abs=float(np.abs(pg - pr).max()), prob_mean_abs=float(np.abs(pg - pr).mean()),
               mask_iou=mask_iou(pg > 0.5, pr > 0.5))
    return rec


def run_batched(runners, specs, images: np.ndarray, names) -> Dict[str, np.ndarray]:
    """The chained parts on ``images`` in batches the engines' batch axis admits; outputs ``names``."""
    from runtime.dense.segmenter import run_parts

    step = next(iter(specs.values())).axis_ranges["batch"][2]
    chunks = [run_parts(runners, specs, {"image": images[i:i + step]}) for i in range(0, len(images), step)]
    return {n: np.concatenate([np.asarray(c[n]) for c in chunks]) for n in names}


def _torch_final(full_net, images: np.ndarray, output_names) -> Dict[str, np.ndarray]:
    import torch

    with torch.no_grad():
        outs = full_net(torch.from_numpy(images))
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    return {n: o.numpy() for n, o in zip(output_names, outs)}


def _final_names(specs) -> List[str]:
    consumed = {t.name for sp in specs.values() for t in sp.inputs}
    return [t.name for sp in specs.values() for t in sp.outputs if t.name not in consumed]


def build(opts: BuildOptions, log: Log) -> ModelFolder:
    """Build the dense / features folder ``opts`` asks for; its manifest says whether every check passed."""
    opts.validate_common()
    opts.refuse(SAM2_ONLY, f"to --model {opts.model} (they are options of the SAM2 builds)")
    if opts.precision == "int8":
        raise UsageError("--precision int8 is not supported for sam2-unet/sam2-unext/features (no "
                         "calibration or accuracy gate for them yet); use fp16 or fp32")
    choice = _choice(opts)
    if choice.kind == "features" and opts.given("max_frame_side"):
        raise UsageError("--max-frame-side does not apply to --model features (no edge graph: float images "
                         "are resized on the host)")
    edges = dense_edge_specs(choice.kind, choice.image_size, opts.max_frame_side)
    precisions = _part_precisions(opts, part_names(choice.kind, choice.split))
    from export.dense.models import assemble_dense, export_nets, model_config, reference_net, specs as make_specs

    if opts.random_weights and opts.checkpoint:
        raise UsageError("--random-weights and --checkpoint exclude each other; pass one")
    out = opts.out or Path("engines") / f"{choice.kind}-{choice.trunk}-{choice.image_size}-{opts.precision}"
    if opts.random_weights:
        banner_random_weights(log)
    log(f"[model] {choice.kind}: Hiera {choice.trunk} (SAM{choice.sam2_version} config) at "
        f"{choice.image_size}px" + (f", DINOv2 {opts.dino_config} at {choice.dino.img_size}px"
                                    if choice.dino else "")
        + (", with FPN" if choice.fpn else "") + (", split" if choice.split else ""))
    t0 = time.time()
    model, report = assemble_dense(choice, opts.checkpoint, opts.random_weights, opts.seed,
                                   opts.allow_key_mismatch)
    if report.unused_other_modules:
        log(f"[model] {report.unused_other_modules} checkpoint tensors outside the image encoder "
            "are unused (memory, decoder)")
    log(f"[model] assembled in {time.time() - t0:.1f}s")

    nets = export_nets(model, choice)
    specs = make_specs(model, choice, opts.max_batch)
    ckpt_hash = None
    if opts.checkpoint:
        from runtime.core.fileio import sha256_file

        ckpt_hash = sha256_file(opts.checkpoint)
    fp = fingerprint({"code": DENSE_CODE_VERSION, "choice": choice.describe(), "ckpt": ckpt_hash,
                      "random": [opts.random_weights, opts.seed if opts.random_weights else None],
                      "max_batch": opts.max_batch})
    previous = prepare_out(out, fp, opts.force, log)

    from export.onnx_export import export_stage

    records = {}
    for i, (name, spec) in enumerate(specs.items(), 1):
        try:
            records[name] = export_stage(nets[name], spec, out, parity_batches(opts.max_batch),
                                         previous.manifest.stages.get(name) if previous else None,
                                         fold=False, log=log, step=f"[{i}/{len(specs)}] ",
                                         axes={"batch": min(2, opts.max_batch)})
        except ValueError as e:  # onnx.checker on a > 2 GB protobuf
            if "2GB" not in str(e):
                raise
            raise UsageError(f"{name}: the graph is larger than ONNX's 2 GB protobuf limit at these "
                             "settings; export it in parts with --split") from e
        records[name].precision = "fp32"  # fp16 parts switch once their FP16 file is written

    from export.edges import export_edge

    edge_records = {name: export_edge(spec, f"pillow-{PIL_FILTER[choice.kind]}", out,
                                      previous.manifest.edge_stages.get(name) if previous else None, log)
                    for name, spec in edges.items()}

    from bench.cases import batch1_cases
    from export.flops import stage_flops

    t = time.time()
    flops = stage_flops(nets, specs, batch1_cases(specs))
    log(f"[flops] {len(flops)} parts counted in {time.time() - t:.1f}s")
    manifest = Manifest(
        kind=choice.kind,
        model=ModelRecord(
            name=choice.trunk, image_size=choice.image_size, sam2_version=choice.sam2_version,
            random_weights=opts.random_weights, seed=opts.seed if opts.random_weights else None,
            details={"trunk": choice.trunk, "split": choice.split, "fpn": choice.fpn,
                     "dino": choice.describe()["dino"], "dino_config": opts.dino_config if choice.dino else None,
                     "parts": list(specs), "outputs": _final_names(specs)}),
        model_config=model_config(model, choice), specs=specs, stages=records, precision=opts.precision,
        edge_specs=edges, edge_stages=edge_records,
        fingerprint=fp, created=now(), flops={"reference": flops, "export": flops},
        provenance={
            "versions": versions(),
            "checkpoints": {"model": {"path": str(opts.checkpoint), "sha256": ckpt_hash}} if opts.checkpoint else {},
            "unused_checkpoint_keys": report.unexpected,
            "preprocess": {"resize": "Pillow's 8-bit bilinear (uint8 input), to image_size x image_size",
                           "normalize": "ImageNet mean/std, inside the graph"},
            "postprocess": None if choice.kind == "features" else {
                "resize": "bilinear (align_corners=False) logits to the input image size",
                "activation": "sigmoid"}})
    folder = ModelFolder(out, manifest)
    failed = [k for k, r in {**records, **edge_records}.items() if not r.parity["passed"]]
    if failed:
        manifest.fail(f"parity gate failed for {failed} (fp32 files: rel L2 {FP32_PARITY.max_rel_l2}; edge graphs: their record)")
    else:
        _check_chain(folder, model, choice, precisions, opts, reference_net, log)

    from export.engines import build_engines

    manifest.tensorrt = build_engines(folder, previous, skip=opts.skip_tensorrt, log=log)
    finish(folder, t0, log)
    return folder


def _check_chain(folder: ModelFolder, model, choice, precisions, opts: BuildOptions, reference_net, log: Log):
    """End to end (the chained FP32 files vs the whole PyTorch model), then the FP16 policy."""
    from runtime.core.backends.onnxruntime import OnnxRuntimeStageRunner

    manifest, specs = folder.manifest, folder.specs
    images = test_images(choice.image_size)
    final = _final_names(specs)
    ref = _torch_final(reference_net(model, choice), images, final)
    runners = {k: OnnxRuntimeStageRunner(sp, folder.path / manifest.stages[k].files["fp32"].file,
                                         providers=["CPUExecutionProvider"]) for k, sp in specs.items()}
    try:
        for r in runners.values():
            r.activate()
        fp32_out = run_batched(runners, specs, images, final)
        e2e = compare_chain(fp32_out, ref, choice.kind)
        e2e["passed"] = e2e["rel_l2"] <= FP32_PARITY.max_rel_l2
        log(f"[check] end to end vs PyTorch ({len(images)} images): rel L2 {e2e['rel_l2']:.2e}"
            + (f", probability max abs {e2e['prob_max_abs']:.2e}" if "prob_max_abs" in e2e else "")
            + f" {'ok' if e2e['passed'] else 'FAILED'}")
        manifest.checks["end_to_end"] = e2e
        if not e2e["passed"]:
            manifest.fail(f"fp32 parity above {FP32_PARITY.max_rel_l2} end to end")
            return
        if "fp16" not in precisions.values():
            return
        write_fp16_parts(folder, precisions, log)
        if opts.no_fp16_check:
            log("[fp16] --no-fp16-check: the FP16 files are not measured")
            return
        if opts.calib is not None:
            images = calibration_images(opts.calib, choice.image_size)
            fp32_out = run_batched(runners, specs, images, final)
            log(f"[fp16] measuring on {len(images)} images from {opts.calib}")
        fp16 = measure_fp16(folder, precisions, runners, images, fp32_out, choice.kind, log)
        manifest.checks["fp16"] = fp16
        if not fp16["passed"]:
            # As the int8 gate: a folder whose FP16 engines would miss the gate is refused.
            manifest.fail(f"FP16 files outside their gate ({fp16['gate']}); {fp16['suggestion']}")
    finally:
        for r in runners.values():
            r.deactivate()


def calibration_images(calib_dir: Path, size: int) -> np.ndarray:
    """``[N,3,S,S]`` model inputs of the images in ``calib_dir`` (calib.workloads.load_images), as the runtime makes them."""
    from calib.workloads import load_images
    from runtime.dense.segmenter import prepare_image

    return np.concatenate([prepare_image(img, size)[0] for img in load_images(calib_dir)])


def write_fp16_parts(folder: ModelFolder, precisions, log: Log) -> None:
    """``<part>.fp16.onnx`` (calib.fp16) for every part built at fp16; its engine is built from it."""
    from calib.fp16 import write_fp16

    for k, p in precisions.items():
        if p != "fp16":
            continue
        st = folder.stage(k)
        dst = folder.path / onnx_name(k, "fp16")
        info = write_fp16(folder.path / st.files["fp32"].file, dst)
        st.files["fp16"] = FileRecord(dst.name, sha256_file(dst), info)
        st.precision = "fp16"
        log(f"[fp16] {k}: wrote {dst.name}")


def _fp16_runners(folder: ModelFolder, parts, fp32_runners):
    from runtime.core.backends.onnxruntime import OnnxRuntimeStageRunner

    return {k: (OnnxRuntimeStageRunner(sp, folder.path / folder.stage(k).files["fp16"].file,
                                       providers=["CPUExecutionProvider"]).activate()
                if k in parts else fp32_runners[k]) for k, sp in folder.specs.items()}


def measure_fp16(folder: ModelFolder, precisions, fp32_runners, images, fp32_out, kind, log) -> dict:
    """The FP16 files in ONNX Runtime against the FP32 ONNX chain, same images."""
    t = time.time()
    parts = [k for k, p in precisions.items() if p == "fp16"]
    runners = _fp16_runners(folder, parts, fp32_runners)
    try:
        got = run_batched(runners, folder.specs, images, list(fp32_out))
    finally:
        for k in parts:
            runners[k].deactivate()
    rec = compare_chain(got, fp32_out, kind)
    if kind == "features":
        rec["gate"] = FEATURES_FP16.as_dict()
        rec["passed"] = not FEATURES_FP16.failures(rec)
        summary = f"worst rel L2 {rec['rel_l2']:.2e}, min cosine {rec['min_cosine']:.5f}"
    else:
        rec["gate"] = DENSE_FP16.as_dict()
        rec["passed"] = not DENSE_FP16.failures(rec["prob_max_abs"], rec["mask_iou"])
        summary = (f"logits rel L2 {rec['rel_l2']:.2e}, probability max abs {rec['prob_max_abs']:.2e} "
                   f"(mean {rec['prob_mean_abs']:.1e}), mask IoU {rec['mask_iou']:.4f}")
    rec.update(files={k: folder.stage(k).files["fp16"].file for k in parts}, parts=dict(precisions),
               images=int(len(images)))
    for k in parts:
        folder.stage(k).measured["fp16"] = {k2: v for k2, v in rec.items() if k2 in ("rel_l2", "min_cosine",
                                                                                   "prob_max_abs", "mask_iou")}
    log(f"[fp16] the FP16 files: {summary} vs fp32 ({'within' if rec['passed'] else 'OUTSIDE'} the gate) "
        f"in {time.time() - t:.0f}s")
    if not rec["passed"]:
        rec["suggestion"] = _fp16_suggestion(folder, precisions, fp32_runners, images, fp32_out, kind)
        log(f"[fp16] GATE FAILED: {rec['suggestion']}")
    return rec


def _fp16_suggestion(folder: ModelFolder, precisions, fp32_runners, images, fp32_out, kind) -> str:
    """Which setting to rebuild with: for split builds, the fp16 part that alone loses the most."""
    fp16_parts = [k for k, p in precisions.items() if p == "fp16"]
    if len(folder.specs) == 1:
        return ("rebuild with --precision fp32" + ("" if kind == "features" else
                ", or with --split and --fp32-parts for the encoder that loses the most"))
    loss, key = {}, "rel_l2" if kind == "features" else "prob_max_abs"
    for k in fp16_parts:
        runners = _fp16_runners(folder, [k], fp32_runners)
        try:
            got = run_batched(runners, folder.specs, images, list(fp32_out))
        finally:
            runners[k].deactivate()
        loss[k] = compare_chain({n: got[n] for n in fp32_out}, fp32_out, kind)[key]
    k = max(loss, key=loss.get)
    keep = sorted({p for p, v in precisions.items() if v == "fp32"} | {k})
    return (f"alone in fp16, {', '.join(f'{p} gives {key} {v:.2e}' for p, v in loss.items())}: "
            f"rebuild with --split --fp32-parts {','.join(keep)} (or --precision fp32)")


