"""Overlap and boundary metrics of binary masks: Dice, IoU and the 95 % Hausdorff distance.

Each takes a predicted and a reference mask of one image (any shape, any dtype; nonzero is
inside). The 95 % Hausdorff distance is the larger of the two directed 95th percentiles of
boundary-to-boundary distances (as MONAI computes it), in pixels: the distance from each
boundary pixel of one mask to the nearest boundary pixel of the other, computed exactly with
a Euclidean distance transform. A boundary pixel is a mask pixel with a 4-neighbour outside
the mask (or on the image's edge).

Empty masks: two empty masks agree (Dice and IoU 1, distance 0); one empty mask against a
non-empty one has Dice and IoU 0 and no defined distance (``None``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["boundary", "describe", "dice", "hausdorff95", "iou", "mask_scores"]


def _bool(mask: np.ndarray) -> np.ndarray:
    return np.asarray(mask) != 0


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """``2 |A ∩ B| / (|A| + |B|)``; 1 for two empty masks."""
    a, b = _bool(pred), _bool(ref)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def iou(pred: np.ndarray, ref: np.ndarray) -> float:
    """``|A ∩ B| / |A ∪ B|``; 1 for two empty masks."""
    a, b = _bool(pred), _bool(ref)
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def boundary(mask: np.ndarray) -> np.ndarray:
    """The mask's boundary pixels: inside, with a 4-neighbour outside or on the edge."""
    m = _bool(mask)
    inner = ndi.binary_erosion(m, structure=ndi.generate_binary_structure(m.ndim, 1),
                               border_value=0)  # fmt: skip
    return m & ~inner


def _directed(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Distance from every boundary pixel of ``src`` to the nearest boundary pixel of ``dst``."""
    distance_to_dst = ndi.distance_transform_edt(~dst)
    return distance_to_dst[src]


def hausdorff95(pred: np.ndarray, ref: np.ndarray) -> float | None:
    """The 95 % Hausdorff distance in pixels (``None`` if exactly one mask is empty)."""
    a, b = boundary(pred), boundary(ref)
    if not a.any() and not b.any():
        return 0.0
    if not a.any() or not b.any():
        return None
    return float(max(np.percentile(_directed(a, b), 95), np.percentile(_directed(b, a), 95)))


def mask_scores(pred: np.ndarray, ref: np.ndarray) -> dict[str, float | None]:
    """``{"dice", "iou", "hd95"}`` of one image."""
    return {"dice": dice(pred, ref), "iou": iou(pred, ref), "hd95": hausdorff95(pred, ref)}


def describe(values: list[float]) -> dict[str, float | int | None]:
    """Mean, standard deviation (``n - 1``), minimum, median and ``n`` of per-image values
    (``None`` for no values)."""
    if not values:
        return {"mean": None, "std": None, "min": None, "median": None, "n": 0}
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
            "min": float(a.min()), "median": float(np.median(a)), "n": len(a)}  # fmt: skip
