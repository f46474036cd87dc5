"""Reading and writing images and masks with OpenCV (RGB in, RGB out)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from runtime.core.fileio import atomic_path
from runtime.errors import InputError


def read_rgb(path: str | Path) -> np.ndarray:
    """Image file -> ``[H,W,3]`` uint8 RGB (OpenCV reads BGR)."""
    if not Path(path).is_file():
        raise InputError(f"image {str(path)!r} does not exist")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise InputError(f"cannot read image {str(path)!r} (not an image file?)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_mask(path: str | Path) -> np.ndarray:
    """Mask file -> ``[H,W]`` bool (any non-zero pixel is foreground)."""
    if not Path(path).is_file():
        raise InputError(f"mask {str(path)!r} does not exist")
    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise InputError(f"cannot read mask {str(path)!r} (not an image file?)")
    return m > 0


def write_image(path: str | Path, rgb: np.ndarray) -> None:
    """Write an RGB (or single-channel) image atomically; format from the suffix."""
    path = Path(path)
    img = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb
    ok, buf = cv2.imencode(path.suffix or ".png", img)
    if not ok:
        raise InputError(f"cannot encode {path.suffix!r} images; use .png or .jpg")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())
