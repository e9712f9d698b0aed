"""One image's infection and severity, for ``predict`` and ``serve``.

:class:`InfectionReader` runs a lung segmenter and an infection segmenter on a whole decoded
image, as ``segment predict`` does for a dataset: the lungs post-processed and judged
(:func:`~cxrlab.segment.apply.finished_mask`), the infection kept inside them
(:func:`~cxrlab.segment.masks.clean_infection`), and the severity
(:func:`~cxrlab.segment.severity.severity`). A doubtful lung mask gives no numbers: the
reading says why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data import resize_gray8
from .apply import finished_mask, segmenter_id
from .masks import clean_infection
from .model import load_segmenter, predict_probs
from .severity import Severity, severity

__all__ = ["SEVERITY_COLUMNS", "InfectionReader", "InfectionReading", "severity_cells"]

#: The severity columns ``predict`` adds to its CSV, in order.
SEVERITY_COLUMNS = ("infection_fraction", "right_lung_fraction", "left_lung_fraction", "grade",
                    "lungs")  # fmt: skip


def severity_cells(reading: dict[str, Any] | None) -> list[str]:
    """The :data:`SEVERITY_COLUMNS` cells of a reading's :meth:`~InfectionReading.to_dict`
    (empty ones for no reading, or no number)."""
    out = []
    for column in SEVERITY_COLUMNS:
        value = (reading or {}).get(column)
        out.append("" if value is None else f"{value:.5f}" if isinstance(value, float)
                   else str(value))  # fmt: skip
    return out


@dataclass(frozen=True)
class InfectionReading:
    """The lungs, the infection (``(S, S)`` uint8 0/1 at the infection segmenter's size) and
    the severity of one image."""

    lungs: np.ndarray
    infection: np.ndarray
    severity: Severity

    def to_dict(self) -> dict[str, Any]:
        """The numbers (``None`` where the lungs are doubtful; ``lungs`` says why)."""
        s = self.severity
        return {"infection_fraction": s.infection_fraction, "right_lung_fraction":
                s.right_fraction, "left_lung_fraction": s.left_fraction, "grade": s.grade,
                "right_lung_grade": s.right_grade, "left_lung_grade": s.left_grade,
                "lungs": "ok" if s.ok else f"doubtful ({s.reason})"}  # fmt: skip

    def overlay(self, gray: np.ndarray) -> Image.Image:
        """The image with the infection tinted red and the lungs outlined in green, at the
        infection segmenter's size."""
        size = self.infection.shape[0]
        base = resize_gray8(np.ascontiguousarray(gray), size).astype(np.float32) / 255
        rgb = np.repeat(base[..., None], 3, axis=-1)
        sick = self.infection.astype(bool)
        rgb[sick] = 0.55 * rgb[sick] + 0.45 * np.array([1.0, 0.1, 0.05])
        lung = self.lungs.astype(bool)
        inner = lung.copy()
        for axis in (0, 1):
            for shift in (1, -1):
                inner &= np.roll(lung, shift, axis)
        rgb[lung & ~inner] = (0.2, 1.0, 0.3)
        return Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8))


class InfectionReader:
    """A lung segmenter and an infection segmenter, run on one whole image at a time.

    Raises:
        CheckpointError: ``infection`` is not an infection segmenter, or ``lungs`` not a lung
            segmenter (each said in one line).
    """

    def __init__(
        self, infection: str | os.PathLike[str], lungs: str | os.PathLike[str], device: str = "cpu"
    ) -> None:
        self.infection_run, self.lungs_run = Path(infection), Path(lungs)
        self.model, self.card = load_segmenter(infection, "infection")
        self.lung_model, self.lung_card = load_segmenter(lungs, "lungs")
        self.device = torch.device(device)
        self.model.to(self.device)
        self.lung_model.to(self.device)

    @staticmethod
    def _probs(model: Any, gray: np.ndarray, size: int,
               lungs: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
        context = None if lungs is None else np.asarray(lungs)[None]
        return predict_probs(model, resize_gray8(gray, size)[None], [0], lungs=context)[0]

    def read(self, gray: np.ndarray) -> InfectionReading:
        """The reading of one decoded ``(H, W)`` uint8 image."""
        size = self.card.image_size
        lung, status = finished_mask(self._probs(self.lung_model, gray, self.lung_card.image_size),
                                     size)  # fmt: skip
        sick = clean_infection(self._probs(self.model, gray, size, lung), lung)
        if status == "ok":
            sev = severity(lung, sick)
        else:
            sev = Severity.missing(status.removeprefix("doubtful (").removesuffix(")"))
        return InfectionReading(lung, sick, sev)

    def describe(self) -> dict[str, Any]:
        """Which segmenters, and their test scores."""
        return {"infection": segmenter_id(self.infection_run, "infection"),
                "lungs": segmenter_id(self.lungs_run)}  # fmt: skip
