"""Hyperparameter search inside a study: choosing each cell's trial on validation data.

Every candidate of a search space is a trial cell with its own run folder. Per cell and
seed, the trial with the best validation loss (or validation accuracy, ``[study] select``)
at its kept checkpoint stands for the cell; only its test metrics enter the results tables
and comparisons. The choice reads the model card and ``history.csv`` (validation only),
never ``metrics.json`` or ``predictions.csv`` (test): a test split that steered a choice
would no longer be a test.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from ... import run_files
from ...errors import CheckpointError
from ...runs.folder import RunDir, load_card
from ..study_config import without_seed

__all__ = ["plot_trials", "select_trial", "trials_csv", "validation_scores"]


def validation_scores(run_dir: Path) -> dict[str, float] | None:
    """Validation loss and accuracy of a run's kept checkpoint, or ``None`` if unfinished.

    Reads only ``model_card.json`` and ``history.csv``; a run without ``metrics.json`` has not
    finished (its kept checkpoint may still change) and counts as unfinished.
    """
    if not RunDir(run_dir).finished:
        return None
    try:
        card = load_card(run_dir)
        best = int(card.training.best_epoch)
        with open(run_dir / run_files.HISTORY, newline="") as f:
            row = next(r for r in csv.DictReader(f) if int(float(r["epoch"])) == best)
    except (CheckpointError, OSError, ValueError, KeyError, StopIteration):
        return None
    return {"val_loss": float(card.training.best_val_loss),
            "val_acc": float(row["val_acc"]), "best_epoch": float(best)}  # fmt: skip


def select_trial(scores: Sequence[dict[str, float]], metric: str = "val_loss") -> int:
    """Index of the best candidate: lowest validation loss, or highest validation accuracy.

    Ties go to the earlier candidate (the order the search space lists them in).
    """
    if metric not in ("val_loss", "val_acc"):
        raise ValueError(f"select must be val_loss or val_acc, got {metric!r}")
    sign = 1 if metric == "val_loss" else -1
    return min(range(len(scores)), key=lambda i: (sign * scores[i][metric], i))


def trials_csv(trials: list[dict[str, Any]]) -> str:
    """Every trial: the cell it is a candidate for, its values, validation scores, chosen."""
    if not trials:
        return ""
    keys = list(dict.fromkeys(k for t in trials for k in t))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for t in trials:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in t.items()})
    return buf.getvalue()


def plot_trials(trials: list[dict[str, Any]], metric: str, out: Path) -> Path | None:
    """Validation score of every candidate, one panel per cell, one line per seed."""
    if not trials:
        return None
    cells = list(dict.fromkeys(without_seed(t["selects_for"]) for t in trials))
    fig, axes = plt.subplots(1, len(cells), figsize=(3.4 * len(cells), 3.2), dpi=110,
                             squeeze=False, sharey=True)  # fmt: skip
    for ax, cell in zip(axes[0], cells):
        mine = [t for t in trials if without_seed(t["selects_for"]) == cell]  # all seeds
        candidates = list(dict.fromkeys(t["candidate"] for t in mine))
        for seed in sorted({t["seed"] for t in mine}):
            pts = [t for t in mine if t["seed"] == seed]
            xs = [candidates.index(t["candidate"]) for t in pts]
            ax.plot(xs, [t[metric] for t in pts], "o-", alpha=0.7, label=f"seed {seed}")
            for t in pts:
                if t["chosen"]:
                    ax.plot(candidates.index(t["candidate"]), t[metric], "k*", ms=11)
        ax.set_xticks(range(len(candidates)))
        ax.set_xticklabels(candidates, rotation=30, ha="right", fontsize=7)
        ax.set_title(cell, fontsize=7)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel(f"{metric.replace('_', ' ')} at the kept checkpoint")
    axes[0, -1].legend(fontsize=6)
    fig.suptitle("Search: validation score per candidate (star: chosen)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
