"""What an image says of how it was acquired and stored, not of the lungs: the features the
audit's acquisition probes (:mod:`cxrlab.audit.probes`) and the shift signature
(:mod:`cxrlab.shift.signals`) read.

* ``thumbnail``: the image at 16x16 pixels (framing, exposure, patient size and position).
* ``histogram``: the 32-bin intensity histogram (exposure, processing, windowing).
* ``border``: the outer 8 % of the image on each side, averaged across its width into 16
  values per side (collimation edges, burned-in text, rulers, markers).
* ``file``: the original file's size in bytes (and per pixel), width, height, format and
  pixel mode/bit depth.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["PROBES", "probe_features"]

PROBES = ("thumbnail", "histogram", "border", "file")
_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")
_MODES = ("L", "RGB", "RGBA", "I;16", "I", "P", "LA")


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    return np.asarray(
        Image.fromarray(np.ascontiguousarray(img)).resize((w, h), Image.BILINEAR),
        dtype=np.float32,
    )


def _border(img: np.ndarray, frac: float = 0.08, n: int = 16) -> np.ndarray:
    h, w = img.shape
    k = max(2, round(frac * min(h, w)))
    strips = [img[:k, :], img[-k:, :], img[:, :k].T, img[:, -k:].T]  # each (k, length)
    return np.concatenate([_resize(s, n, 1)[0] for s in strips]) / 255.0


def _file_features(path: Path) -> np.ndarray:
    try:
        size = os.stat(path).st_size
        with Image.open(path) as im:
            fmt, mode, (w, h) = im.format or "", im.mode, im.size
    except (OSError, ValueError):
        size, fmt, mode, w, h = 0, "", "", 1, 1
    return np.array(
        [
            math.log1p(size),
            math.log1p(size / max(1, w * h)),
            w,
            h,
            w / max(1, h),
            *(fmt == f for f in _FORMATS),
            fmt not in _FORMATS,
            *(mode == m for m in _MODES),
            mode not in _MODES,
        ],
        dtype=np.float64,
    )


def probe_features(
    probe: str, images: np.ndarray, root: Path | None = None, paths: Sequence[str] = ()
) -> np.ndarray:
    """``(N, F)`` features of one probe for ``(N, H, W)`` uint8 images (or their files)."""
    if probe == "thumbnail":
        return np.stack([_resize(im, 16, 16).ravel() / 255.0 for im in images])
    if probe == "histogram":
        return np.stack(
            [np.bincount(np.asarray(im).ravel() // 8, minlength=32) / im.size for im in images]
        )
    if probe == "border":
        return np.stack([_border(np.asarray(im)) for im in images])
    if probe == "file":
        if root is None:
            raise ValueError("the file probe needs the dataset root and the image paths")
        return np.stack([_file_features(Path(root) / p) for p in paths])
    raise ValueError(f"Unknown probe {probe!r}; choose from {', '.join(PROBES)}")
