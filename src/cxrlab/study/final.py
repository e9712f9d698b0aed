"""A study's result as one model folder: ``<study>/final/``.

With ``[study] final = "best"`` the training type with the lowest mean validation loss over
its seeds is chosen, and its seed with the lowest validation loss becomes the final model;
with ``final = "ensemble"`` all seeds of that training type are averaged. Either way the
folder is an ensemble folder (:mod:`cxrlab.engine.ensemble`) that ``predict``, ``evaluate``,
``export`` and ``serve`` accept like a run folder. The choice reads validation losses only.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..engine.ensemble import write_ensemble
from ..engine.rundir import load_card
from .config import StudyConfig

__all__ = ["FINAL_DIR", "write_final"]

FINAL_DIR = "final"


def _val_loss(run: Path) -> float:
    return float(load_card(run).training.best_val_loss)


def write_final(study: StudyConfig, rows: list[dict[str, Any]], study_dir: Path) -> Path | None:
    """Write ``final/`` for a finished study whose ``[study] final`` asks for it."""
    mode = study.settings.final
    target = study_dir / FINAL_DIR
    if mode == "none" or not rows:
        return None
    arms: dict[tuple[str, str], list[tuple[float, Path]]] = defaultdict(list)
    for r in rows:
        run = study_dir / "runs" / r["cell"]
        arms[(r["model"], r["label"])].append((_val_loss(run), run))
    (model, label), runs = min(arms.items(),
                               key=lambda kv: sum(v for v, _ in kv[1]) / len(kv[1]))  # fmt: skip
    mean = sum(v for v, _ in runs) / len(runs)
    members = [min(runs)[1]] if mode == "best" else [r for _, r in sorted(runs)]
    what = "its best seed" if mode == "best" else f"all {len(members)} seeds averaged"
    if target.exists():
        shutil.rmtree(target)
    return write_ensemble(
        members, target,
        f"{model}, {label}: the training type with the lowest mean validation loss "
        f"({mean:.4f} over {len(runs)} seeds); {what}",
    )  # fmt: skip
