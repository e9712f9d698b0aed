"""From a segmenter's probabilities to a mask a command may use, and a verdict on it.

An infection segmenter's output is cleaned by :func:`clean_infection`: thresholded, kept
inside the lungs and rid of specks; an empty mask is a valid answer there.

:func:`clean_mask` thresholds the probabilities, keeps the two largest connected components
(the two lungs; specks elsewhere are dropped) and fills holes inside each. :func:`judge_mask`
says whether the result is plausible: a mask is *doubtful* when its area is outside the range
real lung masks have, when it is not two lungs of comparable size, or when the segmenter was
unsure over much of it. Doubtful masks are listed by the commands that make them and are
never used silently.

The ranges come from the 900 lung masks of COVID-QU-Ex's training split (``../shared/cxr-masks``):
lung area 7-52 % of the image (1st-99th percentile 11-45 %), 894 of 900 masks with exactly two
components, and the smaller lung at least 30 % of the larger in every mask with two.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

__all__ = ["LIMITS", "MIN_SPOT", "MaskLimits", "MaskVerdict", "clean_infection", "clean_mask",
           "judge_mask"]  # fmt: skip

#: An infection region smaller than this share of the lungs is dropped as a speck (fewer than
#: 1 % of the 606 regions of COVID-QU-Ex's 300 training infection masks are smaller).
MIN_SPOT = 0.005


@dataclass(frozen=True)
class MaskLimits:
    """What a plausible lung mask looks like (see the module docstring for the data)."""

    min_area: float = 0.05  # share of the image
    max_area: float = 0.60
    min_second_lung: float = 0.20  # the smaller lung's area over the larger's
    max_unsure: float = 0.15  # share of the mask's pixels with a probability in (0.2, 0.8)


LIMITS = MaskLimits()


@dataclass(frozen=True)
class MaskVerdict:
    """Whether a mask may be used, and if not, why."""

    area: float
    lungs: int
    second_lung: float
    unsure: float
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.reasons

    def to_dict(self) -> dict:
        return {"ok": self.ok, "area": round(self.area, 4), "lungs": self.lungs,
                "second_lung": round(self.second_lung, 4), "unsure": round(self.unsure, 4),
                "reasons": list(self.reasons)}  # fmt: skip


def clean_mask(prob: np.ndarray, threshold: float = 0.5, keep: int = 2) -> np.ndarray:
    """The ``keep`` largest connected components (8-connected) of ``prob >= threshold``, each
    with its holes filled, as a ``uint8`` mask of 0 and 1."""
    binary = np.asarray(prob) >= threshold
    labels, n = ndi.label(binary, structure=np.ones((3, 3), bool))
    out = np.zeros(binary.shape, dtype=np.uint8)
    if n == 0:
        return out
    sizes = np.bincount(labels.ravel())[1:]
    for k in np.argsort(sizes)[::-1][:keep]:
        out |= ndi.binary_fill_holes(labels == k + 1).astype(np.uint8)
    return out


def clean_infection(prob: np.ndarray, lungs: np.ndarray | None, threshold: float = 0.5,
                    min_spot: float = MIN_SPOT) -> np.ndarray:  # fmt: skip
    """An infection segmenter's probabilities as a ``uint8`` 0/1 mask: ``prob >= threshold``
    inside the lungs (COVID-QU-Ex's infection masks never leave them), without regions
    (8-connected) smaller than ``min_spot`` of the lungs' area (of the image without lungs).
    An empty result is an answer: no infection."""
    binary = np.asarray(prob) >= threshold
    area = binary.size
    if lungs is not None:
        inside = np.asarray(lungs) != 0
        binary &= inside
        area = int(inside.sum()) or area
    labels, n = ndi.label(binary, structure=np.ones((3, 3), bool))
    if n == 0:
        return binary.astype(np.uint8)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_spot * area
    keep[0] = False
    return keep[labels].astype(np.uint8)


def judge_mask(mask: np.ndarray, prob: np.ndarray | None = None,
               limits: MaskLimits = LIMITS) -> MaskVerdict:  # fmt: skip
    """The verdict on a cleaned mask (``prob``: the probabilities it came from, for the
    segmenter's certainty)."""
    m = np.asarray(mask) != 0
    area = float(m.mean())
    labels, n = ndi.label(m, structure=np.ones((3, 3), bool))
    sizes = sorted(np.bincount(labels.ravel())[1:].tolist(), reverse=True)
    second = sizes[1] / sizes[0] if len(sizes) >= 2 else 0.0
    unsure = 0.0
    if prob is not None and m.any():
        p = np.asarray(prob, dtype=np.float32)
        unsure = float(((p > 0.2) & (p < 0.8)).sum() / m.sum())
    reasons = []
    if not m.any():
        reasons.append("empty mask")
    elif not limits.min_area <= area <= limits.max_area:
        reasons.append(f"lung area {area:.0%} of the image, outside "
                       f"{limits.min_area:.0%}-{limits.max_area:.0%}")  # fmt: skip
    if m.any() and (n < 2 or second < limits.min_second_lung):
        reasons.append("not two lungs" + (f" (the smaller is {second:.0%} of the larger)"
                                          if n >= 2 else f" ({n} region)"))  # fmt: skip
    if unsure > limits.max_unsure:
        reasons.append(f"low confidence ({unsure:.0%} of the mask between 0.2 and 0.8)")
    return MaskVerdict(area, n, second, unsure, tuple(reasons))
