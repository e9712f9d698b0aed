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
from typing import Any

from ..errors import CheckpointError
from ..utils import write_json
from .rundir import CARD_FILE, load_card

__all__ = ["ENSEMBLE_FORMAT", "is_ensemble", "member_dirs", "write_ensemble"]

ENSEMBLE_FORMAT = "cxrlab-ensemble/1"


def is_ensemble(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an ensemble folder (not a run folder)."""
    try:
        card = json.loads((Path(path) / CARD_FILE).read_text())
    except (OSError, ValueError):
        return False
    return card.get("format") == ENSEMBLE_FORMAT


def member_dirs(path: str | os.PathLike[str]) -> list[Path]:
    """The member run folders of an ensemble folder (relative paths resolved against it)."""
    path = Path(path)
    card = json.loads((path / CARD_FILE).read_text())
    dirs = [(path / m["path"]).resolve() for m in card["members"]]
    missing = [d for d in dirs if not (d / CARD_FILE).is_file()]
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
    first = cards[0]
    for run, card in zip(runs[1:], cards[1:]):
        for what, key in (("classes", lambda c: c["classes"]),
                          ("input size", lambda c: c["preprocessing"]["image_size"]),
                          ("split", lambda c: c["data"]["split_hash"]),
                          ("lungs mode", lambda c: c["data"].get("lungs", "keep"))):  # fmt: skip
            if key(card) != key(first):
                raise CheckpointError(
                    f"{run} has other {what} ({key(card)}) than {runs[0]} ({key(first)}); "
                    "ensemble members must share classes, input size, split and lungs mode"
                )
    out.mkdir(parents=True, exist_ok=True)

    def rel(p: Path) -> str:
        return os.path.relpath(p.resolve(), out.resolve())

    card = {
        "format": ENSEMBLE_FORMAT,
        "description": description or f"the average of {len(runs)} runs' probabilities",
        "members": [
            {
                "path": rel(r),
                "model": c["model"],
                "weights": c["weights"],
                "freeze": c["freeze"].get("policy"),
                "seed": c["training"]["seed"],
                "best_val_loss": c["training"]["best_val_loss"],
                "test_accuracy": c["training"].get("test_accuracy"),
                "temperature": c.get("calibration", {}).get("temperature", 1.0),
            }
            for r, c in zip(runs, cards)
        ],
        "model": "+".join(dict.fromkeys(c["model"] for c in cards)),
        "architecture": "+".join(dict.fromkeys(c["architecture"] for c in cards)),
        "classes": first["classes"],
        "preprocessing": first["preprocessing"],
        "data": first["data"],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(out / CARD_FILE, card)
    if (runs[0] / "split.csv").is_file():
        shutil.copyfile(runs[0] / "split.csv", out / "split.csv")
    return out


def ensemble_card(sources: Sequence[str | os.PathLike[str]]) -> dict[str, Any]:
    """The card describing ``sources`` as one model: an ensemble's own, or a run's."""
    if len(sources) == 1 and not is_ensemble(sources[0]):
        return load_card(sources[0])
    if len(sources) == 1:
        return json.loads((Path(sources[0]) / CARD_FILE).read_text())
    return {"format": ENSEMBLE_FORMAT, **load_card(expand_members(sources)[0]),
            "members": [{"path": str(p)} for p in expand_members(sources)]}  # fmt: skip
