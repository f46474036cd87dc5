"""``python -m runtime segment``: few-shot segmentation of image files.

References are given with the options of :mod:`runtime.cli.references`
(``--ref [CONCEPT=]IMAGE:MASK``, ``--ref-scribble``, ``--ref-box``,
``--ref-points``, ``--refs FOLDER``). Every target gets
``<name>_<concept>_mask.png`` and ``<name>_overlay.png`` in ``--out``, and
the per-stage timings are printed.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import List, Optional

from runtime.cli.common import HelpFormatter, add_debug, run_main
from runtime.cli.references import add_reference_options
from runtime.core.backends import BACKENDS, CPU_INT8_HELP, CPU_INT8_MODES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m runtime segment",
        description="Segment target images given reference images (few-shot).",
        formatter_class=HelpFormatter)
    p.add_argument("--model-dir", required=True, type=Path, help="model folder made by export.build")
    add_reference_options(p)
    p.add_argument("--target", action="append", required=True, type=Path,
                   help="image to segment; repeat for several")
    p.add_argument("--out", required=True, type=Path, help="folder for masks and overlays")
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--threshold", type=float, default=0.5, help="probability threshold of the masks")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for onnxruntime (0 = all)")
    p.add_argument("--cpu-int8", choices=CPU_INT8_MODES, default="auto", help=CPU_INT8_HELP)
    add_debug(p)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: _segment(args), debug=args.debug)


def _segment(args) -> int:
    from runtime.camera.overlay import concept_colours, draw_masks
    from runtime.cli.references import apply_references, collect
    from runtime.core.imageio import read_rgb, write_image
    from runtime.sam2.fewshot import FewShotSegmenter

    refs = collect(args)
    targets = [(t, read_rgb(t)) for t in args.target]
    with FewShotSegmenter.load(args.model_dir, backend=args.backend, threshold=args.threshold,
                               threads=args.threads, cpu_int8=args.cpu_int8) as seg:
        int8 = seg.session.variant_stages("cpu-int8")
        print(f"backend: {seg.backend}" + (f" (dynamic INT8: {', '.join(int8)})" if int8 else "")
              + f"; {len(refs)} reference(s), {len(targets)} target(s)")
        apply_references(seg, refs)
        timings = {}
        args.out.mkdir(parents=True, exist_ok=True)
        for path, img in targets:
            res = seg.segment(img)
            for k, v in res.timings.items():
                timings.setdefault(k, []).append(v)
            for concept, r in res.concepts.items():
                write_image(args.out / f"{path.stem}_{concept}_mask.png", r.mask.astype("uint8") * 255)
            masks = {c: r.mask for c, r in res.concepts.items()}
            write_image(args.out / f"{path.stem}_overlay.png",
                        draw_masks(img.copy(), masks, concept_colours(seg.concepts)))
            scores = ", ".join(f"{c}: {r.mask.mean():.1%} of pixels, predicted IoU {r.iou:.3f}"
                               for c, r in res.concepts.items())
            print(f"{path.name}: {scores} ({res.timings['total'] * 1000:.0f} ms)")
        print("per-stage median (ms): " + ", ".join(
            f"{k} {statistics.median(v) * 1000:.1f}" for k, v in timings.items()))
    return 0
