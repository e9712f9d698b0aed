"""A study's result as one model folder: ``<study>/final/``.

With ``[study] final = "best"`` the training type with the lowest mean validation loss over
its seeds is chosen, and its seed with the lowest validation loss becomes the final model;
with ``final = "ensemble"`` all seeds of that training type are averaged. Either way the
folder is an ensemble folder (:mod:`cxrlab.runs.ensemble`) that ``predict``, ``evaluate``,
``export`` and ``serve`` accept like a run folder. The choice reads validation data only.

Only cells trained on all the study's data are candidates; a cell that holds a source out
is not. With ``final_by = "holdout_val_nll"`` a training type is scored instead by how its
leave-one-source-out cells did on the held-out sources' own validation splits (their
``holdout.json``): the mean validation NLL over seeds, on the held-out sources that every
candidate held out (so that all are compared on the same images). That chooses a recipe for
data from elsewhere; training types without such cells are not candidates. With
``final_by = "val_and_holdout"`` a training type is scored by the mean of the two, its
validation loss on the study's own data and its held-out validation NLL: a recipe must do
well both where it was trained and where it was not (two recipes that tie elsewhere are told
apart by how well they fit here).
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..runs.ensemble import write_ensemble
from ..runs.folder import load_card
from .report.results import collect_results
from .study_config import FINAL_DIR, Cell, StudyConfig

__all__ = ["FINAL_DIR", "choose_final", "final_scores", "write_final"]


def _val_loss(run: Path) -> float:
    return float(load_card(run).training.best_val_loss)


def choose_final(study: StudyConfig, study_dir: str | Path) -> Path | None:
    """Choose a finished study's final model and write ``final/`` (replacing one there).

    The study runner calls this when the study's last cell has finished, and ``cxrlab study
    final`` does on demand; ``cxrlab study report`` only reads ``final/``.

    Returns:
        The folder, or ``None`` when ``[study] final`` is ``"none"``, a cell has not
        finished, or no training type is a candidate.
    """
    study_dir = Path(study_dir)
    results = collect_results(study, study_dir)
    if results.missing:
        return None
    return write_final(study, results.rows, study_dir)


def write_final(study: StudyConfig, rows: list[dict[str, Any]], study_dir: Path) -> Path | None:
    """Write ``final/`` for a finished study whose ``[study] final`` asks for it."""
    mode = study.settings.final
    target = study_dir / FINAL_DIR
    if mode == "none" or not rows:
        return None
    cells = {c.id: c for c in study.cells}
    runs = {r["cell"]: study_dir / "runs" / r["cell"] for r in rows
            if not _holds_out(cells.get(r["cell"]))}  # fmt: skip
    val_losses = {cell: _val_loss(run) for cell, run in runs.items()}
    scores, how = final_scores(study, rows, val_losses)
    if not scores:
        return None
    (model, label) = min(scores, key=lambda arm: scores[arm])
    chosen = sorted((val_losses[c], runs[c]) for r in rows if (c := r["cell"]) in runs
                    and (r["model"], r["label"]) == (model, label))  # fmt: skip
    over = f" over {len(chosen)} seeds" if study.settings.final_by == "val_loss" else ""
    members = [chosen[0][1]] if mode == "best" else [r for _, r in chosen]
    what = "its best seed" if mode == "best" else f"all {len(members)} seeds averaged"
    if target.exists():
        shutil.rmtree(target)
    return write_ensemble(
        members, target,
        f"{model}, {label}: the training type with {how} ({scores[(model, label)]:.4f}{over}); "
        f"{what}",
    )  # fmt: skip


def final_scores(
    study: StudyConfig, rows: list[dict[str, Any]], val_losses: dict[str, float]
) -> tuple[dict[tuple[str, str], float], str]:
    """Each candidate training type, as ``(model, label)``, with the score ``final_by``
    gives it (lower is better), and how it was scored. ``val_losses`` holds the validation
    loss of each run trained on all the data, by cell id; held-out NLLs come from ``rows``
    (``holdout_val_nll``)."""
    cells = {c.id: c for c in study.cells}
    arms: dict[tuple[str, str], list[float]] = defaultdict(list)
    kinds: dict[str, tuple[str, str]] = {}  # training type -> its arm
    for r in rows:
        cell = cells.get(r["cell"])
        if _holds_out(cell) or r["cell"] not in val_losses:
            continue  # only runs trained on all the data can be the final model
        arms[(r["model"], r["label"])].append(val_losses[r["cell"]])
        if cell is not None:
            kinds[_training_type(cell)] = (r["model"], r["label"])
    here = {arm: sum(v) / len(v) for arm, v in arms.items()}
    by = study.settings.final_by
    if by == "val_loss":
        return here, "the lowest mean validation loss"
    held, sources = _holdout_scores(cells, rows, kinds)
    on = f"validation NLL on held-out {', '.join(sources)}"
    if by == "holdout_val_nll" or not held:
        return held, f"the lowest mean {on}"
    both = {arm: (here[arm] + held[arm]) / 2 for arm in held}
    return both, f"the lowest mean of its validation loss and its {on}"


def _holds_out(cell: Cell | None) -> bool:
    return cell is not None and bool(cell.config.holdout_source)


def _training_type(cell: Cell) -> str:
    """What a cell trains, whatever its seed and held-out source."""
    return repr(cell.config.replace(seed=0, holdout_source=None))


def _holdout_scores(
    cells: dict[str, Cell], rows: list[dict[str, Any]], kinds: dict[str, tuple[str, str]]
) -> tuple[dict[Any, float], list[str]]:
    """Per arm trained on all the data, the mean validation NLL of its leave-one-source-out
    cells on the sources they held out, over the held-out sources every such arm held out
    (empty when no arm has such cells); and those sources."""
    nll: dict[Any, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        cell = cells.get(r["cell"])
        value = r.get("holdout_val_nll")
        if cell is None or not cell.config.holdout_source or value in (None, ""):
            continue
        arm = kinds.get(_training_type(cell))
        if arm is not None:
            nll[arm][cell.config.holdout_source].append(float(value))
    shared = set.intersection(*(set(by) for by in nll.values())) if nll else set()
    if not shared:
        return {}, []
    scores = {arm: sum(v for s in shared for v in by[s]) / sum(len(by[s]) for s in shared)
              for arm, by in nll.items()}  # fmt: skip
    return scores, sorted(shared)
