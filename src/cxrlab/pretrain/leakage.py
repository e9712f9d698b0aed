"""Did a pretraining run see the images a later run is evaluated on?

Self-supervised pretraining ignores labels, but a backbone that saw a test image (or a
re-saved copy of it) has already adapted to it: scoring it there is transductive, and the
number is not comparable to one from a backbone that never saw it. A pretraining run
records every image it saw (``images.csv``: content hashes; ``signatures.npz``: perceptual
signatures); :func:`seen_by_pretraining` finds a run's images among them, exact copies by
hash and near copies (re-saved, re-sized, re-cropped) as :mod:`cxrlab.data.dedup` finds
them everywhere else.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import run_files
from ..data.dedup import ImageSignatures, near_duplicates, signatures
from ..errors import CheckpointError
from .card import read_pretrain_card

__all__ = ["PretrainingSeen", "seen_by_pretraining"]


@dataclass(frozen=True)
class PretrainingSeen:
    """Which of the given images a pretraining run saw: row numbers, exact and near."""

    exact: tuple[int, ...]
    near: tuple[int, ...]

    @property
    def rows(self) -> tuple[int, ...]:
        return tuple(sorted({*self.exact, *self.near}))

    def __len__(self) -> int:
        return len(self.rows)


def _seen(run: Path) -> tuple[set[str], ImageSignatures]:
    try:
        with open(run / run_files.PRETRAIN_IMAGES, newline="") as f:
            hashes = {row["hash"] for row in csv.DictReader(f)}
        with np.load(io.BytesIO((run / run_files.PRETRAIN_SIGNATURES).read_bytes())) as z:
            sig = ImageSignatures(z["hashes"], z["thumbs"].astype(np.float32))
    except (OSError, KeyError, ValueError) as e:
        raise CheckpointError(
            f"Cannot read which images the pretraining run {run} saw "
            f"({run_files.PRETRAIN_IMAGES}, {run_files.PRETRAIN_SIGNATURES}: "
            f"{type(e).__name__}); it cannot be checked for leakage"
        ) from e
    return hashes, sig


def seen_by_pretraining(
    run: str | os.PathLike[str], hashes: Sequence[str], images: np.ndarray
) -> PretrainingSeen:
    """The rows of ``images`` (``(N, H, W)`` uint8, any size; their content hashes
    ``hashes``) that the pretraining run in ``run`` saw, exactly or as near copies.

    Raises:
        CheckpointError: ``run`` is not a finished pretraining run with its image lists.
    """
    folder = Path(run)
    read_pretrain_card(folder)  # a finished pretraining run, or one line
    seen_hashes, seen_sig = _seen(folder)
    exact = tuple(i for i, h in enumerate(hashes) if h in seen_hashes)
    near: set[int] = set()
    if len(images):
        for i, _, _, _ in near_duplicates(signatures(images), seen_sig):
            near.add(i)
    return PretrainingSeen(exact, tuple(sorted(near - set(exact))))
