"""``python -m runtime segment``: few-shot segmentation of image files.

References are given with the options of :mod:`runtime.cli.references`
(``--ref [CONCEPT=]IMAGE:MASK``, ``--ref-scribble``, ``--ref-box``,
``--ref-points``, ``--refs FOLDER``). Every target gets
``<name>_<concept>_mask.png`` and ``<name>_overlay.png`` in ``--out``
(``<name>`` is the file's stem; targets with the same stem from different
folders get ``-2``, ``-3``... in command-line order; characters other than
letters, digits, ``.``, ``-`` and ``_`` in a concept become ``_``), and the
per-stage timings are printed.
"""

from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path
from typing import List, Optional

from runtime.cli.common import HelpFormatter, add_debug, add_edge_options, add_objects_options, run_main
from runtime.cli.references import add_reference_options
from runtime.core.backends import BACKENDS, CPU_INT8_HELP, CPU_INT8_MODES
from runtime.errors import UsageError


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
    add_edge_options(p)
    add_objects_options(p, "concepts")
    add_debug(p)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: _segment(args), debug=args.debug)


def output_names(paths: List[Path]) -> List[str]:
    """A distinct output stem per target: its file stem, ``-2``, ``-3``... for repeats."""
    seen: dict = {}
    out = []
    for p in paths:
        n = seen[p.stem] = seen.get(p.stem, 0) + 1
        out.append(p.stem if n == 1 else f"{p.stem}-{n}")
    return out


def safe(name: str) -> str:
    """``name`` as a file-name part: no separators, no leading dots."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "_"


def _segment(args) -> int:
    from runtime.camera.overlay import concept_colours, draw_masks
    from runtime.cli.references import apply_references, collect
    from runtime.core.imageio import read_rgb, write_image
    from runtime.sam2.fewshot import FewShotSegmenter

    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {str(args.out)!r} is a file: give a folder for the masks and overlays")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {str(args.out)!r} cannot be created ({e.strerror})") from e
    refs = collect(args)
    targets = [(t, read_rgb(t)) for t in args.target]
    names = output_names(args.target)
    with FewShotSegmenter.load(args.model_dir, backend=args.backend, threshold=args.threshold,
                               threads=args.threads, cpu_int8=args.cpu_int8, preprocess=args.preprocess,
                               postprocess=args.postprocess, objects_per_call=args.objects_per_call,
                               pad_objects=args.pad_objects, return_logits=False) as seg:
        int8 = seg.session.variant_stages("cpu-int8")
        print(f"backend: {seg.backend}" + (f" (dynamic INT8: {', '.join(int8)})" if int8 else "")
              + f"; {len(refs)} reference(s), {len(targets)} target(s)")
        apply_references(seg, refs)
        timings = {}
        for (path, img), name in zip(targets, names):
            res = seg.segment(img)
            for k, v in res.timings.items():
                timings.setdefault(k, []).append(v)
            for concept, r in res.concepts.items():
                write_image(args.out / f"{name}_{safe(concept)}_mask.png", r.mask.astype("uint8") * 255)
            masks = {c: r.mask for c, r in res.concepts.items()}
            write_image(args.out / f"{name}_overlay.png",
                        draw_masks(img.copy(), masks, concept_colours(seg.concepts)))
            scores = ", ".join(f"{c}: {r.mask.mean():.1%} of pixels, predicted IoU {r.iou:.3f}"
                               for c, r in res.concepts.items())
            print(f"{path}{'' if name == path.stem else f' (as {name})'}: {scores} ({res.timings['total'] * 1000:.0f} ms)")
        print("per-stage median (ms): " + ", ".join(
            f"{k} {statistics.median(v) * 1000:.1f}" for k, v in timings.items()))
    return 0
