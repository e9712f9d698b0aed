"""Leave one source out: train on every source but one, then score the one left out.

With ``holdout_source`` a run trains on the other sources of ``data`` and afterwards scores
the held-out source on its own validation and test splits (drawn with the run's split seed
and ratios), leaving out copies of the run's training and validation images first. The
held-out validation split is a fair signal for choosing a recipe that travels; its test
split, never used to choose anything, says how far the chosen recipe got. Each split also
gets its shift report (:mod:`cxrlab.shift`: would the run have flagged the source it never
saw, and how close its accuracy estimate without labels came). Results go to
``<run>/holdout.json``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..data import prepare_data
from ..data.sources import parse_sources
from ..errors import ConfigError
from ..utils import write_json
from .config import TrainConfig
from .evaluate import evaluate_run
from .scoring import open_run

__all__ = ["HOLDOUT_FILE", "score_holdout", "split_sources"]

HOLDOUT_FILE = "holdout.json"


#: What :func:`split_sources` returns for each side: ``(data, class_map, sources_csv,
#: patients)``.
SourceParts = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]


def split_sources(config: TrainConfig) -> tuple[SourceParts, SourceParts | tuple[()]]:
    """``(training, held)``: each ``(data, class_map, sources_csv, patients)``, the
    held-out source's apart from the rest (``held`` is empty without ``holdout_source``).

    Raises:
        ConfigError: ``holdout_source`` names no source of ``data``, or leaves none to train
            on.
    """
    data = (config.data,) if isinstance(config.data, str) else tuple(config.data)
    whole = (data, config.class_map, config.sources_csv, config.patients)
    name = config.holdout_source
    if not name:
        return whole, ()
    names = [s.name for s in parse_sources(data)]
    if name not in names:
        raise ConfigError(
            f"holdout_source {name!r} is not one of the sources ({', '.join(names)}); name "
            "them with --data NAME=PATH"
        )
    if len(names) < 2:
        raise ConfigError("holdout_source needs at least two sources: one to train on")

    def part(items: tuple[str, ...], held: bool) -> tuple[str, ...]:
        return tuple(t for t in items if (t.partition("=")[0] == name) == held)

    kept = tuple(d for d, n in zip(data, names) if n != name)
    held = tuple(d for d, n in zip(data, names) if n == name)
    return ((kept, part(config.class_map, False), part(config.sources_csv, False),
             part(config.patients, False)),
            (held, part(config.class_map, True), part(config.sources_csv, True),
             part(config.patients, True)))  # fmt: skip


def _shift(run_dir: Path, prepared: Any, split: str, progress: bool) -> dict[str, Any]:
    """Would the run have seen the held-out source coming? The shift report of its split
    (:mod:`cxrlab.shift`), without per-image rows; ``{"error": ...}`` where it cannot be
    made."""
    from ..errors import CxrlabError
    from ..shift.report import shift_report, shift_summary

    try:
        return shift_summary(shift_report(run_dir, prepared, split=split, progress=progress))
    except CxrlabError as e:
        return {"error": str(e)}


def score_holdout(
    run_dir: str | os.PathLike[str], config: TrainConfig, *, progress: bool = True
) -> dict[str, Any] | None:
    """Score the held-out source of a finished run on its validation and test splits (see
    the module docstring) and write ``holdout.json``; ``None`` without ``holdout_source``."""
    _, held = split_sources(config)
    if not held:
        return None
    run_dir = Path(run_dir)
    data, class_map, sources_csv, patients = held
    prepared = prepare_data(
        data, class_map=class_map, sources_csv=sources_csv, split_seed=config.split_seed,
        ratios=config.ratios, near_copies=config.near_copies, patients=patients,
        progress=progress,
        **(open_run(run_dir).preparation() | {"doubtful": "skip"}),
    )  # fmt: skip
    out: dict[str, Any] = {"source": config.holdout_source}
    for split in ("val", "test"):
        m = evaluate_run(run_dir, data=prepared, split=split, progress=progress)
        m.pop("routing_paths", None)
        m["shift"] = _shift(run_dir, prepared, split, progress)
        out[split] = m
    write_json(run_dir / HOLDOUT_FILE, out)
    return out
