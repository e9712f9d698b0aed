"""Ensembles: several finished runs used as one model (their probabilities averaged).

An ensemble folder holds only a ``model_card.json`` (format ``cxrlab-ensemble/1``) that names
its member run folders, and the members' shared ``split.csv``; ``predict``, ``evaluate``,
``export`` and ``serve`` accept it wherever they accept a run folder. Each member's
probabilities are its calibrated ones (its own temperature, its own test-time augmentation),
so an ensemble of one run predicts exactly what the run predicts.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from .. import run_files
from ..errors import CheckpointError
from ..utils import write_json
from .card import ENSEMBLE_FORMAT, EnsembleCard, RunCard, read_card
from .folder import load_card

__all__ = [
    "ENSEMBLE_FORMAT",
    "check_members",
    "expand_members",
    "is_ensemble",
    "member_dirs",
    "read_ensemble",
    "write_ensemble",
]


def is_ensemble(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an ensemble folder (not a run folder)."""
    try:
        card = json.loads((Path(path) / run_files.CARD).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(card, dict) and card.get("format") == ENSEMBLE_FORMAT


def read_ensemble(path: str | os.PathLike[str]) -> EnsembleCard:
    """An ensemble folder's card.

    Raises:
        CheckpointError: the folder is not an ensemble cxrlab can read.
    """
    card = read_card(Path(path) / run_files.CARD)
    if not isinstance(card, EnsembleCard):
        raise CheckpointError(f"{path} is a run folder, not an ensemble")
    return card


def member_dirs(path: str | os.PathLike[str]) -> list[Path]:
    """The member run folders of an ensemble folder (relative paths resolved against it)."""
    path = Path(path)
    dirs = [(path / m.path).resolve() for m in read_ensemble(path).members]
    missing = [d for d in dirs if not (d / run_files.CARD).is_file()]
    if missing:
        raise CheckpointError(
            f"The ensemble in {path} names a member that is not a finished run: {missing[0]}"
        )
    return dirs


def expand_members(sources: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Run folders from run folders and ensemble folders (an ensemble is its members)."""
    out: list[Path] = []
    for s in sources:
        out += member_dirs(s) if is_ensemble(s) else [Path(s)]
    return out


def check_members(
    runs: Sequence[Path],
    cards: Sequence[RunCard],
    why: str = "ensemble members must share classes, input size, split and lungs mode",
) -> None:
    """Refuse runs that cannot be scored together on one preparation of the same images:
    other classes, input sizes, data splits or lungs modes than the first. Every check of
    several runs (an ensemble, ``open_run`` of several, the reuse analysis) goes through
    this one; ``why`` ends the message.

    Raises:
        CheckpointError: naming the first difference.
    """
    first = cards[0]
    for run, card in zip(runs[1:], cards[1:]):
        for what, key in (("classes", lambda c: c.classes),
                          ("input size", lambda c: c.image_size),
                          ("split", lambda c: c.data.split_hash),
                          ("lungs mode", lambda c: c.lungs)):  # fmt: skip
            if key(card) != key(first):
                raise CheckpointError(
                    f"{run} has other {what} ({key(card)}) than {runs[0]} ({key(first)}); {why}"
                )


def write_ensemble(
    members: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], description: str = ""
) -> Path:
    """Write an ensemble folder naming ``members`` (run folders, or ensembles to flatten).

    Raises:
        CheckpointError: no members, a member that is not a finished run, or members with
            other classes, input sizes, data splits or lungs modes than the first.
    """
    out = Path(out)
    runs = expand_members(members)
    if not runs:
        raise CheckpointError("An ensemble needs at least one run folder")
    cards = [load_card(r) for r in runs]
    check_members(runs, cards)
    out.mkdir(parents=True, exist_ok=True)
    paths = [os.path.relpath(r.resolve(), out.resolve()) for r in runs]
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    card = EnsembleCard.of_runs(cards, paths, description, created)
    write_json(out / run_files.CARD, card.to_dict())
    if (runs[0] / run_files.SPLIT).is_file():
        shutil.copyfile(runs[0] / run_files.SPLIT, out / run_files.SPLIT)
    return out
