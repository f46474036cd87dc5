"""Drawing on BGR frames: one colour per concept (alpha blend + contour), and a HUD."""

from __future__ import annotations

from typing import Dict, Mapping, Sequence, Tuple

import numpy as np

# BGR, distinct on typical scenes; concepts beyond the list reuse it cyclically.
PALETTE: Tuple[Tuple[int, int, int], ...] = (
    (0, 200, 255), (255, 120, 0), (80, 220, 60), (220, 60, 220), (60, 60, 240),
    (240, 220, 0), (0, 140, 255), (180, 105, 255), (128, 128, 0), (255, 255, 255),
)


def concept_colours(concepts: Sequence[str]) -> Dict[str, Tuple[int, int, int]]:
    """A stable colour per concept (by order of appearance)."""
    return {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(concepts)}


def draw_masks(frame: np.ndarray, masks: Mapping[str, np.ndarray],
               colours: Mapping[str, Tuple[int, int, int]], alpha: float = 0.45,
               labels: bool = True) -> np.ndarray:
    """Blend each concept's mask into ``frame`` (in place) and outline it; returns ``frame``."""
    import cv2

    for i, (concept, mask) in enumerate(masks.items()):
        if mask is None or not mask.any():
            continue
        colour = colours.get(concept, PALETTE[i % len(PALETTE)])
        m = mask.astype(bool)
        region = frame[m].astype(np.float32)
        frame[m] = (region * (1 - alpha) + np.asarray(colour, np.float32) * alpha).astype(np.uint8)
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(frame, contours, -1, colour, 2, cv2.LINE_AA)
        if labels and contours:
            x, y, _, _ = cv2.boundingRect(max(contours, key=cv2.contourArea))
            _text(frame, concept, (x + 2, max(y - 4, 12)), colour)
    return frame


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
