"""Drawing on BGR frames: one colour per concept (alpha blend + outline), and a HUD."""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

# BGR, distinct on typical scenes; concepts beyond the list reuse it cyclically.
PALETTE: Tuple[Tuple[int, int, int], ...] = (
    (0, 200, 255), (255, 120, 0), (80, 220, 60), (220, 60, 220), (60, 60, 240),
    (240, 220, 0), (0, 140, 255), (180, 105, 255), (128, 128, 0), (255, 255, 255),
)


def concept_colours(concepts: Sequence[str]) -> Dict[str, Tuple[int, int, int]]:
    """A stable colour per concept (by order of appearance)."""
    return {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(concepts)}


def mask_box(mask: np.ndarray) -> Optional[Tuple[int, int, int, int]]:
    """``(y0, y1, x0, x1)`` bounding the mask's pixels (exclusive ends), None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask[rows[0]:rows[-1] + 1].any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def draw_masks(frame: np.ndarray, masks: Mapping[str, np.ndarray],
               colours: Mapping[str, Tuple[int, int, int]], alpha: float = 0.45,
               labels: bool = True) -> np.ndarray:
    """Blend each concept's mask into ``frame`` (BGR uint8, in place), outline it, label it.

    Work is confined to the mask's bounding box (plus the 1-pixel outline
    margin) and done by OpenCV's masked arithmetic: the blend is the box scaled
    by ``1 - alpha`` plus ``alpha * colour``, written through the mask; the
    2-pixel outline is the mask's 3x3 morphological gradient (its boundary
    pixels inside and out, holes included), so a noisy mask costs no more than
    a smooth one. The label sits at the box's top-left. Returns ``frame``.
    """
    import cv2

    h, w = frame.shape[:2]
    for i, (concept, mask) in enumerate(masks.items()):
        if mask is None:
            continue
        box = mask_box(mask)
        if box is None:
            continue
        colour = colours.get(concept, PALETTE[i % len(PALETTE)])
        y0, y1, x0, x1 = max(box[0] - 1, 0), min(box[1] + 1, h), max(box[2] - 1, 0), min(box[3] + 1, w)
        roi = frame[y0:y1, x0:x1]  # a view: drawing in it draws in the frame
        m = np.ascontiguousarray(mask[y0:y1, x0:x1], dtype=bool).view(np.uint8)
        tint = tuple(float(round(alpha * c)) for c in colour) + (0.0,)  # integral: OpenCV's fast path
        cv2.add(cv2.convertScaleAbs(roi, alpha=1.0 - alpha), tint, dst=roi, mask=m)
        ring = cv2.morphologyEx(m, cv2.MORPH_GRADIENT, _KERNEL3)
        cv2.subtract(roi, (255.0, 255.0, 255.0, 0.0), dst=roi, mask=ring)  # saturates to 0 ...
        cv2.add(roi, tuple(float(c) for c in colour) + (0.0,), dst=roi, mask=ring)  # ... then the colour
        if labels:
            _text(frame, concept, (box[2] + 2, max(box[0] - 4, 12)), colour)
    return frame


_KERNEL3 = np.ones((3, 3), np.uint8)


def draw_hud(frame: np.ndarray, fps: float, stage_ms: Mapping[str, float]) -> np.ndarray:
    """FPS and per-stage milliseconds of this frame, top-left (in place)."""
    scale = max(0.35, min(0.6, frame.shape[0] / 720 * 0.6))
    step = int(22 * scale / 0.6)
    lines = [f"{fps:5.1f} FPS"] + [f"{k} {v:6.1f} ms" for k, v in stage_ms.items()]
    for i, line in enumerate(lines):
        _text(frame, line, (6, step * (i + 1)), (255, 255, 255), scale)
    return frame


def _text(frame, text, org, colour, scale: float = 0.5) -> None:
    import cv2

    cv2.putText(frame, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(frame, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)
