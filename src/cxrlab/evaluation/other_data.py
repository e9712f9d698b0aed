"""Scoring a model on data from elsewhere: class matching, where images went, overlap.

An external dataset rarely has the model's classes exactly: COVID-QU-Ex calls COVID
``COVID-19`` and lumps other lung disease into ``Non-COVID``; a hospital's set may hold only
Normal and Viral Pneumonia. :func:`match_classes` pairs each dataset class with a model
class by name (exactly, then by the COVID-19 Radiography Database's aliases), or as the user
maps it; a class mapped to ``-`` is not scored, but where its images went is still shown.

A second dataset built from the same public sources may hold copies of the training images.
:func:`find_overlap` finds them by content hash (exact copies) and by perceptual signature
(re-sized or re-cropped copies, see :mod:`cxrlab.data.dedup`) before any number is computed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.dedup import near_duplicates, signatures
from ..data.layout import UNSCORED, canonical_class_name, parse_class_map
from ..errors import CheckpointError

__all__ = ["UNSCORED", "Overlap", "find_overlap", "match_classes", "parse_class_map", "routing"]


def match_classes(
    dataset_classes: Sequence[str],
    model_classes: Sequence[str],
    class_map: dict[str, str] | None = None,
    *,
    where: str = "the model",
    unknown_unscored: bool = False,
) -> dict[str, str | None]:
    """Each dataset class's model class, or ``None`` for a class left unscored.

    ``unknown_unscored``: a class that matches no model class and is not mapped is left
    unscored (a site's folder of unlabelled images) instead of refused.

    Raises:
        CheckpointError: a dataset class matches no model class and is not mapped (unless
            ``unknown_unscored``), or the map names a class that is in neither list.
    """
    class_map = dict(class_map or {})
    model = list(model_classes)
    for name, target in class_map.items():
        if name not in dataset_classes:
            raise CheckpointError(
                f"--class-map names {name!r}, which is not a class of the dataset "
                f"({', '.join(dataset_classes)})"
            )
        if target != UNSCORED and target not in model:
            raise CheckpointError(
                f"--class-map maps {name!r} to {target!r}, which {where} does not know "
                f"(it knows {', '.join(model)})"
            )
    out: dict[str, str | None] = {}
    unknown = []
    for c in dataset_classes:
        if c in class_map:
            out[c] = None if class_map[c] == UNSCORED else class_map[c]
        elif c in model:
            out[c] = c
        elif (alias := canonical_class_name(c)) is not None and alias in model:
            out[c] = alias
        elif unknown_unscored:
            out[c] = None
        else:
            unknown.append(c)
    if unknown:
        first = unknown[0]
        raise CheckpointError(
            f"The dataset has class(es) {', '.join(map(repr, unknown))} that {where} was not "
            f"trained on (it knows {', '.join(model)}); map each with --class-map "
            f"'{first}=<model class>', or leave it unscored with --class-map '{first}=-'"
        )
    return out


def routing(
    dataset_labels: Sequence[str], predictions: np.ndarray, model_classes: Sequence[str]
) -> dict[str, dict[str, int]]:
    """``{dataset class: {model class: images predicted as it}}``: where each class went."""
    out: dict[str, dict[str, int]] = {}
    for label, pred in zip(dataset_labels, predictions):
        row = out.setdefault(label, dict.fromkeys(model_classes, 0))
        row[model_classes[int(pred)]] += 1
    return out


@dataclass
class Overlap:
    """Copies of a run's own images (train/val/test) inside another dataset.

    Attributes:
        exact: ``(external path, run path, run split)`` with identical pixels.
        near: ``(external path, run path, run split, correlation)`` re-sized or re-cropped
            copies (not in ``exact``).
        checked_near: whether near copies were looked for (the run's data must be readable).
        note: why near copies were not looked for.
    """

    exact: list[tuple[str, str, str]] = field(default_factory=list)
    near: list[tuple[str, str, str, float]] = field(default_factory=list)
    checked_near: bool = False
    note: str = ""

    def paths(self, splits: Sequence[str] = ("train", "val")) -> set[str]:
        """External images that copy a run image of ``splits``."""
        return {e for e, _, s, *_ in [*self.exact, *self.near] if s in splits}

    def summary(self) -> str:
        def count(rows: list, split: str) -> int:
            return len({r[0] for r in rows if r[2] == split})

        parts = [
            f"{count(self.exact, s)} exact / {count(self.near, s)} near copies of {s} images"
            for s in ("train", "val", "test")
        ]
        text = "Overlap with the run's data: " + "; ".join(parts)
        if not self.checked_near:
            text += f" (near copies not checked: {self.note})"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "exact": [{"path": e, "run_path": r, "run_split": s} for e, r, s in self.exact],
            "near": [
                {"path": e, "run_path": r, "run_split": s, "correlation": round(c, 4)}
                for e, r, s, c in self.near
            ],
            "checked_near": self.checked_near,
            "note": self.note,
            "summary": self.summary(),
        }


def find_overlap(
    split_file: str | os.PathLike[str],
    root: str | os.PathLike[str],
    image_size: int,
    records: Sequence[Any],
    pixels: np.ndarray,
    *,
    splits: Sequence[str] | None = None,
    progress: bool = False,
) -> Overlap:
    """Images of another dataset that copy one of a run's images.

    Args:
        split_file: the run's ``split.csv`` (it lists the run's images and hashes).
        root: the folder of the run's images.
        image_size: the run's input size (both sides are compared at it).
        records: the other dataset's images (``path``, ``hash``).
        pixels: their decoded ``(N, H, W)`` uint8 whole images (no lungs mode applied: the
            run's images are compared whole), row-aligned with ``records``.
        splits: compare with the run's images of these splits only (default: all of them);
            so the run's own test images, scored again, are not found as copies of
            themselves.
    """
    from ..data import decoded_images, load_split

    split = load_split(split_file)
    own_records = [(r, s) for r, s in zip(split.records, split.assignment)
                   if splits is None or s in splits]  # fmt: skip
    by_hash: dict[str, tuple[str, str]] = {}
    for r, s in own_records:
        by_hash.setdefault(r.hash, (r.path, s))
    exact = [(rec.path, *by_hash[rec.hash]) for rec in records if rec.hash in by_hash]
    overlap = Overlap(exact=exact)
    if not own_records:
        overlap.checked_near = True
        return overlap
    try:
        own = decoded_images(Path(root), [r for r, _ in own_records], image_size,
                             progress=progress)  # fmt: skip
    except Exception as e:  # the run's data may live on another machine
        overlap.note = f"the run's images at {root} cannot be read ({e})"
        return overlap
    exact_paths = {e for e, *_ in exact}
    for i, j, _, r in near_duplicates(signatures(pixels), signatures(own.array)):
        path = records[i].path
        if path not in exact_paths:
            overlap.near.append((path, own_records[j][0].path, own_records[j][1], r))
    overlap.checked_near = True
    return overlap
