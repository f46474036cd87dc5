"""``python -m runtime.segment``: few-shot segmentation of image files.

References are ``IMG:MASK`` pairs (optionally ``CONCEPT=IMG:MASK``), or
``--ref-scribble [CONCEPT=]IMG:STROKE`` where STROKE is an image whose
non-zero pixels are a scribble on the object (SANSA's scribble prompt); every
target gets ``<name>_<concept>_mask.png`` and ``<name>_overlay.png`` in --out,
and the per-stage timings are printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import List, Optional, Tuple

from runtime.backends import BACKENDS, CPU_INT8_HELP, CPU_INT8_MODES


def parse_ref(text: str) -> Tuple[str, str, str]:
    """``[CONCEPT=]IMG:MASK`` -> (concept, image path, mask path)."""
    concept, _, pair = text.rpartition("=") if "=" in text else ("default", "", text)
    img, sep, mask = pair.rpartition(":")
    if not sep or not img or not mask:
        raise argparse.ArgumentTypeError(
            f"--ref {text!r}: expected IMG:MASK or CONCEPT=IMG:MASK")
    return concept or "default", img, mask


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m runtime.segment",
        description="Segment target images given reference images with masks (few-shot). "
                    "With --dense: SAM2-UNet / SAM2-UNeXT engines, no references "
                    "(`--dense --help`).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--engines", required=True, type=Path, help="folder made by export.build")
    p.add_argument("--ref", action="append", default=[], type=parse_ref,
                   help="reference IMG:MASK (or CONCEPT=IMG:MASK); repeat for k shots / concepts")
    p.add_argument("--ref-scribble", action="append", default=[], type=parse_ref, metavar="[CONCEPT=]IMG:STROKE",
                   help="reference by scribble: STROKE is an image of the reference's size whose "
                        "non-zero pixels mark a stroke on the object (each becomes a positive click)")
    p.add_argument("--target", action="append", required=True, type=Path,
                   help="image to segment; repeat for several")
    p.add_argument("--out", required=True, type=Path, help="folder for masks and overlays")
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--threshold", type=float, default=0.5, help="probability threshold of the masks")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for onnxruntime (0 = all)")
    p.add_argument("--cpu-int8", choices=CPU_INT8_MODES, default="auto",
                   help=CPU_INT8_HELP)
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--dense" in argv:  # SAM2-UNet / SAM2-UNeXT folders: see runtime/dense_cli.py
        from runtime.dense_cli import main as dense_main

        return dense_main(argv)
    args = parse_args(argv)
    if not args.ref and not args.ref_scribble:
        print("error: no reference: give --ref IMG:MASK and/or --ref-scribble IMG:STROKE", file=sys.stderr)
        return 2
    from runtime.backends.base import BackendUnavailable
    from runtime.camera.overlay import concept_colours, draw_masks
    from runtime.imageio import read_mask, read_rgb, write_image
    from runtime.manifest import ManifestError
    from runtime.pipeline import FewShotSegmenter
    from runtime.preprocess import InputError

    try:
        targets = [(t, read_rgb(t)) for t in args.target]
        refs = [(c, read_rgb(i), {"mask": read_mask(m)}, i) for c, i, m in args.ref]
        refs += [(c, read_rgb(i), {"scribble": read_mask(m)}, i) for c, i, m in args.ref_scribble]
        seg = FewShotSegmenter.load(args.engines, backend=args.backend,
                                    threshold=args.threshold, threads=args.threads,
                                    cpu_int8=args.cpu_int8)
    except (InputError, ManifestError, BackendUnavailable, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with seg:
        int8 = seg.engines.cpu_int8_stages
        print(f"backend: {seg.backend}" + (f" (dynamic INT8: {', '.join(int8)})" if int8 else "")
              + f"; {len(refs)} reference(s), {len(targets)} target(s)")
        for concept, img, prompt, path in refs:
            try:
                seg.add_reference(img, concept=concept, **prompt)
            except InputError as e:
                print(f"error: reference {path}: {e}", file=sys.stderr)
                return 2
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
            scores = ", ".join(f"{c}: {r.mask.mean():.1%} of pixels, score {r.score:.3f}"
                               for c, r in res.concepts.items())
            print(f"{path.name}: {scores} ({res.timings['total'] * 1000:.0f} ms)")
        print("per-stage median (ms): " + ", ".join(
            f"{k} {statistics.median(v) * 1000:.1f}" for k, v in timings.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
