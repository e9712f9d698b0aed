"""How much of each lung is infected, and a RALE-style extent grade.

The RALE score (Warren et al. 2018, used for COVID-19 pneumonia by Wong et al. 2020) grades
each lung's extent of consolidation or opacity 0-4: 0 none, 1 under 25 %, 2 25-50 %,
3 50-75 %, 4 over 75 % of the lung; the two lungs add up to 0-8. :func:`severity` gives that
grade from a lung mask and an infection mask: the infected share of both lungs, of each lung,
and the grade. A lung with under :data:`NONE_BELOW` of its area infected grades 0: the
infection segmenter's false-positive aim on healthy lungs is that bound, and COVID-QU-Ex's
reference masks never infect less than 1.3 % of both lungs.

**Which lung is which.** X-rays are read as if facing the patient, so the patient's *right*
lung is on the image's *left*. Of the lung mask's two largest connected components, the one
whose centre lies further left in the image is the right lung. A lung mask that is not two
lungs (:func:`~cxrlab.segment.masks.judge_mask`) gives no numbers: the result says why
instead of a silent grade.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .masks import judge_mask

__all__ = ["EXTENT_EDGES", "NONE_BELOW", "Severity", "extent_grade", "severity", "split_lungs"]

#: Upper bounds of the extent grades 1, 2 and 3 (a lung's infected share).
EXTENT_EDGES = (0.25, 0.50, 0.75)
#: A lung with less than this share infected grades 0 (none).
NONE_BELOW = 0.01


def extent_grade(fraction: float) -> int:
    """A lung's RALE extent grade 0-4 from its infected share (0-1)."""
    if not np.isfinite(fraction) or fraction < 0 or fraction > 1 + 1e-9:
        raise ValueError(f"An infected share lies in [0, 1], got {fraction}")
    if fraction < NONE_BELOW:
        return 0
    return 1 + int(np.searchsorted(EXTENT_EDGES, fraction, side="right"))


def split_lungs(lungs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(right, left)``: the patient's right and left lung of a lung mask (bool arrays).

    The two largest connected components (8-connected); the right lung is the one whose
    centre lies further left in the image (the image faces the patient).

    Raises:
        ValueError: the mask has fewer than two components.
    """
    m = np.asarray(lungs) != 0
    labels, n = ndi.label(m, structure=np.ones((3, 3), bool))
    if n < 2:
        raise ValueError(f"a lung mask of {n} region(s) is not two lungs")
    sizes = np.bincount(labels.ravel())[1:]
    a, b = (int(k) + 1 for k in np.argsort(sizes)[::-1][:2])
    first, second = labels == a, labels == b
    cols = np.arange(m.shape[1])
    if (first.sum(0) * cols).sum() / first.sum() <= (second.sum(0) * cols).sum() / second.sum():
        return first, second
    return second, first


@dataclass(frozen=True)
class Severity:
    """One image's infected shares and extent grade (``None`` where the lungs are doubtful:
    ``reason`` says why)."""

    infection_fraction: float | None
    right_fraction: float | None
    left_fraction: float | None
    grade: int | None
    right_grade: int | None
    left_grade: int | None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return not self.reason

    @classmethod
    def missing(cls, reason: str) -> Severity:
        """No numbers, and why."""
        return cls(None, None, None, None, None, None, reason)

    def to_row(self) -> dict[str, object]:
        """The ``severity.csv`` columns (empty cells where there is no number)."""

        def cell(v: float | int | None) -> object:
            return "" if v is None else (round(v, 5) if isinstance(v, float) else v)

        return {
            "infection_fraction": cell(self.infection_fraction),
            "right_lung_fraction": cell(self.right_fraction),
            "left_lung_fraction": cell(self.left_fraction),
            "grade": cell(self.grade),
            "right_lung_grade": cell(self.right_grade),
            "left_lung_grade": cell(self.left_grade),
            "lungs": "ok" if self.ok else f"doubtful ({self.reason})",
        }


def severity(lungs: np.ndarray, infection: np.ndarray, *, check: bool = True) -> Severity:
    """The infected share of both lungs and of each, and the extent grade 0-8.

    Args:
        lungs: the lung mask (nonzero inside), post-processed.
        infection: the infection mask, the same shape (counted inside the lungs only).
        check: judge the lung mask first (:func:`~cxrlab.segment.masks.judge_mask`, without
            the segmenter's certainty) and give no numbers for a doubtful one.

    Raises:
        ValueError: masks of different shapes.
    """
    lungs, infection = np.asarray(lungs) != 0, np.asarray(infection) != 0
    if lungs.shape != infection.shape:
        raise ValueError(
            f"The infection mask is {infection.shape[::-1]} px, its lung mask "
            f"{lungs.shape[::-1]}: give masks of the same size"
        )
    if check and not (verdict := judge_mask(lungs)).ok:
        return Severity.missing("; ".join(verdict.reasons))
    try:
        right, left = split_lungs(lungs)
    except ValueError as e:
        return Severity.missing(str(e))
    inside = infection & lungs
    fr_right = float((inside & right).sum() / right.sum())
    fr_left = float((inside & left).sum() / left.sum())
    g_right, g_left = extent_grade(fr_right), extent_grade(fr_left)
    total = float(inside.sum() / lungs.sum())
    return Severity(total, fr_right, fr_left, g_right + g_left, g_right, g_left)
