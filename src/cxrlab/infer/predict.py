"""``cxrlab predict``: many files, folders and globs, batched, with a CSV out."""

from __future__ import annotations

import csv
import glob
import io
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from ..data.imageio import ImageReadError, load_gray8
from ..data.layout import is_ignored_file
from ..utils import atomic_write_text
from .predictor import Predictor

if TYPE_CHECKING:
    from ..segment.reading import InfectionReader

__all__ = ["Predictions", "collect_inputs", "predict_paths"]


@dataclass
class Predictions:
    """Per-image results and the files that could not be used."""

    classes: list[str]
    paths: list[str] = field(default_factory=list)
    probs: list[np.ndarray] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    #: per image, how far it lies from the training data and whether it is flagged
    #: (:meth:`Predictor.ood`); empty when not computed
    ood_scores: list[float] = field(default_factory=list)
    ood: list[bool] = field(default_factory=list)
    #: why there are no ood scores, where asked for
    ood_note: str = ""
    #: per image, the infection's severity (an infection segmenter given; see
    #: :class:`~cxrlab.segment.reading.InfectionReading`); empty otherwise
    severity: list[dict[str, Any]] = field(default_factory=list)

    def to_csv(self) -> str:
        """``path, pred, p_<class>...``, ``ood_score, ood`` (empty where they could not be
        computed) and, with an infection segmenter, the severity columns."""
        from ..segment.reading import SEVERITY_COLUMNS, severity_cells

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        extra = list(SEVERITY_COLUMNS) if self.severity else []
        w.writerow(["path", "pred", *(f"p_{c}" for c in self.classes), "ood_score", "ood",
                    *extra])  # fmt: skip
        for k, (path, p) in enumerate(zip(self.paths, self.probs)):
            shift = ([f"{self.ood_scores[k]:.6f}", int(self.ood[k])] if self.ood_scores
                     else ["", ""])  # fmt: skip
            sev = severity_cells(self.severity[k]) if extra else []
            w.writerow([path, self.classes[int(np.argmax(p))], *(f"{v:.6f}" for v in p), *shift,
                        *sev])  # fmt: skip
        return buf.getvalue()


def collect_inputs(
    items: Iterable[str | os.PathLike[str]],
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand files, folders (recursively) and glob patterns into image paths.

    Returns the paths and ``(item, reason)`` for items that matched nothing.
    """
    found: list[Path] = []
    missing: list[tuple[str, str]] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            files = [
                f
                for f in sorted(p.rglob("*"))
                if f.is_file()
                and not is_ignored_file(f.name)
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
            ]
            found.extend(files)
        elif p.is_file():
            found.append(p)
        elif any(ch in str(item) for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(str(item), recursive=True))
            files = [m for m in matches if m.is_file() and not is_ignored_file(m.name)]
            if files:
                found.extend(files)
            else:
                missing.append((str(item), "pattern matched no files"))
        else:
            missing.append((str(item), "no such file or folder"))
    return list(dict.fromkeys(found)), missing


def predict_paths(
    predictor: Predictor,
    items: Iterable[str | os.PathLike[str]],
    *,
    batch_size: int = 32,
    progress: bool = True,
    out: str | os.PathLike[str] | None = None,
    ood: bool = True,
    infection: InfectionReader | None = None,
) -> Predictions:
    """Predict every image among ``items``; unreadable files are skipped with the reason.
    With ``ood``, each image also gets its shift score and flag (:meth:`Predictor.ood`);
    with ``infection``, its infection's severity."""
    paths, missing = collect_inputs(items)
    result = Predictions(predictor.classes, skipped=list(missing))
    batch: list[tuple[str, np.ndarray]] = []
    # one step per image read and predicted (or skipped); shown on a terminal, like training
    bar = tqdm(total=len(paths), desc="Predicting", unit="img", disable=not progress or None)

    def flush() -> None:
        if batch:
            pixels = np.stack([px for _, px in batch])
            if ood:
                probs, shift = predictor.predict_with_ood(pixels)
            else:
                probs, shift = predictor.predict_pixels(pixels), None
            if shift is not None:
                result.ood_scores.extend(float(v) for v in shift[0])
                result.ood.extend(bool(v) for v in shift[1])
            result.paths.extend(p for p, _ in batch)
            result.probs.extend(probs)
            bar.update(len(batch))
            batch.clear()

    with bar:
        for path in paths:
            try:
                if infection is None:
                    pixels = predictor.to_pixels(path)
                else:  # one decode for both
                    gray = load_gray8(path)
                    pixels = predictor.to_pixels(gray, str(path))
                    result.severity.append(infection.read(gray).to_dict())
                batch.append((str(path), pixels))
            except ImageReadError as e:
                result.skipped.append((str(path), e.reason))
                bar.update(1)
            if len(batch) >= batch_size:
                flush()
        flush()
    if ood and predictor.ood_note:
        result.ood_scores.clear()
        result.ood.clear()
        result.ood_note = predictor.ood_note
    if out is not None:
        atomic_write_text(out, result.to_csv())
    return result
