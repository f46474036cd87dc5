"""``python -m export.build``: a model folder (verified ONNX stages, TensorRT engines where possible, manifest).

One command line for every model the toolchain builds; ``--model`` picks the
builder from :data:`BUILDERS`:

- SAM2 sizes (``tiny``, ``small``, ``base_plus``, ``large``):
  :mod:`export.sam2_build` (few-shot with SANSA adapters, or ``--stock-sam2``);
- ``sam2-unet``, ``sam2-unext``, ``features``: :mod:`export.dense.build`.

Options of the other builder are refused with a message. Exit status: 0
complete, 1 built but a check failed (the manifest says which), 2 bad input
(nothing written), 130/143 interrupted (no half file is left).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

from calib.dynamic import WEIGHT_RANGES
from export.models import MODEL_NAMES, SAM2_VERSIONS
from export.options import PRECISIONS, BuildOptions
from runtime.cli.common import HelpFormatter, add_debug, run_main
from runtime.dense.spec import KINDS as DENSE_KINDS
from runtime.errors import EXIT_FAILURE


def _sam2(opts, log):
    from export.sam2_build import build

    return build(opts, log)


def _dense(opts, log):
    from export.dense.build import build

    return build(opts, log)


# --model value -> builder(options, log) -> ModelFolder
BUILDERS: Dict[str, Callable] = {**{m: _sam2 for m in MODEL_NAMES}, **{k: _dense for k in DENSE_KINDS}}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export.build",
        description=(
            "Split SAM2 (+ SANSA few-shot adapters) into image encoder, memory encoder, memory "
            "attention and prompt encoder + mask decoder (or export SAM2-UNet / SAM2-UNeXT / encoder "
            "features); export each to ONNX (opset 17), verify it against PyTorch in ONNX Runtime, "
            "build TensorRT engines when TensorRT and a GPU are present, and record everything in "
            "OUT/manifest.json."),
        formatter_class=HelpFormatter, allow_abbrev=False)
    p.add_argument("--model", default=None, choices=list(BUILDERS), metavar="MODEL",
                   help=f"SAM2 size ({', '.join(MODEL_NAMES)}; default: what the checkpoints are, else "
                        f"tiny), or {', '.join(DENSE_KINDS)} (dense models / encoder features)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp16",
                   help="the precision of the files the engines are built from: fp16 writes "
                        "<stage>.fp16.onnx (normalisation and softmax kept FP32), int8 Q/DQ INT8 files for "
                        "--int8-stages and FP16 ones for the rest; each file is measured and gated")
    p.add_argument("--calib", type=Path,
                   help="fp16/int8/--cpu-int8-stages: the data the reduced-precision files are calibrated and "
                        "gated on, in the layout of the folder's kind (few-shot episodes; stock SAM2: images "
                        "with masks + clips; dense models: a folder of images; see calib/workloads.py); "
                        "default: generated synthetic data")
    p.add_argument("--image-size", type=int, default=None,
                   help="square model input size, multiple of 32 (default: 1024; 352 for sam2-unet)")
    p.add_argument("--random-weights", action="store_true",
                   help="seeded random weights instead of checkpoints: try the tool without a "
                        "download (outputs are meaningless)")
    p.add_argument("--seed", type=int, default=0, help="seed for --random-weights")
    p.add_argument("--allow-key-mismatch", action="store_true",
                   help="load checkpoints even when keys are missing or unexpected")
    p.add_argument("--max-batch", type=int, default=4, help="largest batch of the batched stages' engines")
    p.add_argument("--skip-tensorrt", action="store_true", help="export and verify ONNX only")
    p.add_argument("--force", action="store_true", help="rebuild every stage even if up to date")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default engines/<model>-<version>-<size>-<precision>)")
    add_debug(p)

    p.add_argument("--max-frame-side", type=int, default=1920, metavar="PX",
                   help="largest frame side (height or width) the edge graphs take (SAM2 and the dense "
                        "segmentation models): frames up to it become the model input, and get their "
                        "masks, on the backend (TensorRT); larger ones on the host. TensorRT sizes those "
                        "engines' activations for it (from the shapes at 1920 x 1920 for a 1024 px model: "
                        "the preprocess graph's gathered taps 118 MB, the video preprocess graph's 212 MB, "
                        "the postprocess graph's logits 118 MB at 8 objects); 3840 admits 4K")
    s = p.add_argument_group("SAM2 (few-shot and stock)")
    s.add_argument("--sam2-version", default=None, choices=SAM2_VERSIONS,
                   help="SAM2 config family (default: what --sam2-checkpoint is, told by its keys; 2.1 "
                        "without one; dense: 2.0 for sam2-unet/unext, 2.1 for features). SANSA adapters need 2.0")
    s.add_argument("--sam2-checkpoint", type=Path, help="official SAM2 checkpoint (.pt), as Meta ships it")
    ad = s.add_mutually_exclusive_group()
    ad.add_argument("--adapter-checkpoint", type=Path,
                    help="SANSA adapter checkpoint (.pth) as SANSA's main.py saves it; its 'args' "
                         "(sam2_version, channel_factor, adaptformer_stages) become the defaults")
    ad.add_argument("--no-adapters", action="store_true", help="export SAM2 without adapters")
    s.add_argument("--adapter-stages", default=None,
                   help="0-based Hiera stages that carry adapters, comma separated (default: the "
                        "adapter file's, else 2,3)")
    s.add_argument("--channel-factor", type=float, default=None,
                   help="adapter bottleneck = int(block input dim * factor): 0.3 strict few-shot "
                        "checkpoints, 0.8 generalist ones (default: the adapter file's args or shapes, else 0.3)")
    s.add_argument("--stock-sam2", action="store_true",
                   help="keep the config's object-score head (plain SAM2 use: image predictor, video "
                        "tracker) instead of the few-shot overrides")
    s.add_argument("--max-prompt-frames", type=int, default=8, metavar="N",
                   help="--stock-sam2: frames per object that may carry prompts when tracking (each is "
                        "attended to on every frame: the memory-attention engines take N - 1 more memories)")
    s.add_argument("--max-objects", type=int, default=8, metavar="N",
                   help="concepts (few-shot) or objects (tracking) one memory-attention and one decoder "
                        "call take together; more are segmented in several calls. TensorRT sizes those "
                        "engines for N (memory attention at the full memory profile: N times its "
                        "one-object activations)")
    s.add_argument("--int8-stages", default="image_encoder",
                   help="int8: comma-separated stages to quantize (or 'all'); the others stay fp16. The "
                        "build is refused (status failed) when the accuracy gate fails, with the mixed "
                        "setting that passes")
    s.add_argument("--cpu-int8-stages", default="", metavar="STAGES",
                   help="also write <stage>.cpu-int8.onnx for these stages (comma separated, or 'all'): "
                        "every MatMul in dynamic INT8 for ONNX Runtime on CPUs; measured on --calib "
                        "episodes and kept only where it passes the INT8 gate (the runtime's --cpu-int8 "
                        "auto|on|off uses them). Any --precision")
    s.add_argument("--cpu-int8-range", choices=WEIGHT_RANGES, default="auto",
                   help="--cpu-int8-stages weight range: 'reduced' (7-bit) for x86 CPUs without VNNI, "
                        "whose INT8 GEMM saturates 8-bit weights; 'full' (8-bit) for VNNI/Arm; auto: what "
                        "this machine's CPU needs (build on the CPU you deploy to)")
    s.add_argument("--calib-method", choices=("entropy", "minmax", "percentile"), default="entropy",
                   help="int8: activation range calibration method")
    s.add_argument("--plain-export", action="store_true",
                   help="export sam2's computation as written: no value-projection folding in memory "
                        "attention, no constant folding (the baseline bench.throughput compares against)")
    s.add_argument("--no-cpu-fused", action="store_true",
                   help="skip the fused-attention copies of the image encoder and memory attention that ONNX "
                        "Runtime's CPU provider runs by default (half the host memory, no slower; they cost "
                        "the disk of those two FP32 files): for devices that only run TensorRT")

    d = p.add_argument_group("dense models and encoder features (--model sam2-unet|sam2-unext|features)")
    d.add_argument("--checkpoint", type=Path,
                   help="the model's weights in the authors' layout (features: an official SAM2 checkpoint)")
    d.add_argument("--trunk", choices=MODEL_NAMES, default=None,
                   help="Hiera size (default: large for sam2-unet/unext as the authors, tiny for features)")
    d.add_argument("--dino-config", choices=("large", "tiny"), default="large",
                   help="sam2-unext: DINOv2 ViT (large = timm vit_large_patch14_dinov2; tiny = a 2-block "
                        "test ViT of the same structure)")
    d.add_argument("--dino-size", type=int, default=None,
                   help="sam2-unext: DINOv2 input size (multiple of 14; default 448 as the authors)")
    d.add_argument("--fpn", action="store_true", help="features: also export the FPN neck outputs")
    d.add_argument("--split", action="store_true",
                   help="sam2-unet/unext: export encoder(s) and decoder as separate engines (per-part "
                        "precision with --fp32-parts)")
    d.add_argument("--fp32-parts", default="",
                   help="with --split and --precision fp16: comma-separated parts kept fp32 (e.g. dino_encoder)")
    d.add_argument("--no-fp16-check", action="store_true",
                   help="skip measuring the FP16 policy's error (fp16 builds)")
    return p


def options_from(args: argparse.Namespace) -> BuildOptions:
    return BuildOptions(**{k: v for k, v in vars(args).items() if k != "debug"})


def _log(msg: str) -> None:
    print(msg, flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    opts = options_from(args)

    def body() -> int:
        model = opts.model or "tiny"
        folder = BUILDERS[model](opts, _log)
        return 0 if folder.manifest.status == "complete" else EXIT_FAILURE

    return run_main(body, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
