"""``python -m runtime dense``: SAM2-UNet / SAM2-UNeXT on image files.

Every target gets, in ``--out``: ``<name>_prob.png`` (the probability map as
the authors' ``test.py`` saves it: per-image min-max normalised to 0..255;
``--no-minmax`` writes ``round(255 * p)`` instead), ``<name>_mask.png``
(``p > --threshold``) and ``<name>_overlay.png``. Timings per part are printed.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import List, Optional

from runtime.cli.common import HelpFormatter, add_debug, add_edge_options, run_main
from runtime.core.backends import BACKENDS
from runtime.errors import InputError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m runtime dense",
        description="Dense binary segmentation (SAM2-UNet / SAM2-UNeXT model folders) of image files.",
        formatter_class=HelpFormatter)
    p.add_argument("--model-dir", required=True, type=Path,
                   help="folder made by export.build --model sam2-unet|sam2-unext")
    p.add_argument("--target", action="append", required=True, type=Path,
                   help="image to segment; repeat for several")
    p.add_argument("--out", required=True, type=Path, help="folder for maps, masks and overlays")
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--threshold", type=float, default=0.5, help="probability threshold of the masks")
    p.add_argument("--no-minmax", action="store_true",
                   help="save probabilities as round(255 * p) instead of min-max normalised")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for onnxruntime (0 = all)")
    add_edge_options(p, postprocess=False)
    add_debug(p)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: _dense(args), debug=args.debug)


def _dense(args) -> int:
    import numpy as np

    from runtime.camera.overlay import draw_masks
    from runtime.core.imageio import read_rgb, write_image
    from runtime.dense.segmenter import DenseSegmenter, prob_to_png

    if not 0.0 < args.threshold < 1.0:
        raise InputError(f"--threshold must be in (0, 1), got {args.threshold}")
    targets = [(t, read_rgb(t)) for t in args.target]
    timings = {}
    with DenseSegmenter.load(args.model_dir, backend=args.backend, threads=args.threads,
                            preprocess=args.preprocess) as seg:
        args.out.mkdir(parents=True, exist_ok=True)
        print(f"{seg.kind} at {seg.size}px, backend {seg.backend}; {len(targets)} image(s)")
        for path, img in targets:
            prob = seg.predict(img)
            for k, v in seg.timings.items():
                timings.setdefault(k, []).append(v)
            mask = prob > args.threshold
            write_image(args.out / f"{path.stem}_prob.png", prob_to_png(prob, minmax=not args.no_minmax))
            write_image(args.out / f"{path.stem}_mask.png", mask.astype(np.uint8) * 255)
            write_image(args.out / f"{path.stem}_overlay.png",
                        draw_masks(img.copy(), {"fg": mask}, {"fg": (255, 64, 64)}, labels=False))
            print(f"{path.name}: {mask.mean():.1%} foreground, max p {prob.max():.3f} "
                  f"({seg.timings['total'] * 1000:.0f} ms)")
    print("median (ms): " + ", ".join(f"{k} {statistics.median(v) * 1000:.1f}" for k, v in timings.items()))
    return 0
