"""``python -m runtime.segment --dense``: SAM2-UNet / SAM2-UNeXT on image files.

Every target gets, in ``--out``: ``<name>_prob.png`` (the probability map as
the authors' ``test.py`` saves it: per-image min-max normalised to 0..255;
``--no-minmax`` writes ``round(255 * p)`` instead), ``<name>_mask.png``
(``p > --threshold``) and ``<name>_overlay.png``. Timings per part are printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import List, Optional

from runtime.backends import BACKENDS


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m runtime.segment --dense",
        description="Dense binary segmentation (SAM2-UNet / SAM2-UNeXT engines) of image files.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dense", action="store_true", help="(selects this mode of runtime.segment)")
    p.add_argument("--engines", required=True, type=Path,
                   help="folder made by export.build --model sam2-unet|sam2-unext")
    p.add_argument("--target", action="append", required=True, type=Path,
                   help="image to segment; repeat for several")
    p.add_argument("--out", required=True, type=Path, help="folder for maps, masks and overlays")
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--threshold", type=float, default=0.5, help="probability threshold of the masks")
    p.add_argument("--no-minmax", action="store_true",
                   help="save probabilities as round(255 * p) instead of min-max normalised")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for onnxruntime (0 = all)")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    import numpy as np

    from runtime.backends.base import BackendUnavailable
    from runtime.camera.overlay import draw_masks
    from runtime.dense import DenseSegmenter, prob_to_png
    from runtime.imageio import read_rgb, write_image
    from runtime.manifest import ManifestError
    from runtime.preprocess import InputError

    if not 0.0 < args.threshold < 1.0:
        print(f"error: --threshold must be in (0, 1), got {args.threshold}", file=sys.stderr)
        return 2
    try:
        targets = [(t, read_rgb(t)) for t in args.target]
        seg = DenseSegmenter.load(args.engines, backend=args.backend, threads=args.threads)
    except (InputError, ManifestError, BackendUnavailable, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    timings = {}
    with seg:
        print(f"{seg.kind} at {seg.size}px, backend {seg.backend}; {len(targets)} image(s)")
        for path, img in targets:
            prob = seg.predict(img)
            for k, v in seg.timings.items():
                timings.setdefault(k, []).append(v)
            mask = prob > args.threshold
            png = prob_to_png(prob, minmax=not args.no_minmax)
            write_image(args.out / f"{path.stem}_prob.png", png)
            write_image(args.out / f"{path.stem}_mask.png", mask.astype(np.uint8) * 255)
            write_image(args.out / f"{path.stem}_overlay.png",
                        draw_masks(img.copy(), {"fg": mask}, {"fg": (255, 64, 64)}, labels=False))
            print(f"{path.name}: {mask.mean():.1%} foreground, max p {prob.max():.3f} "
                  f"({seg.timings['total'] * 1000:.0f} ms)")
    print("median (ms): " + ", ".join(f"{k} {statistics.median(v) * 1000:.1f}" for k, v in timings.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
