"""Leave one source out: train on every source but one, then score the one left out.

With ``holdout_source`` a run trains on the other sources of ``data`` and afterwards scores
the held-out source on its own validation and test splits (drawn with the run's split seed
and ratios), leaving out copies of the run's training and validation images first. The
held-out validation split is a fair signal for choosing a recipe that travels; its test
split, never used to choose anything, says how far the chosen recipe got. Given a shift
summary (the trainer passes one), each split also gets its shift report
(:mod:`cxrlab.shift`: would the run have flagged the source it never saw, and how close its
accuracy estimate without labels came). Results go to ``<run>/holdout.json``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import run_files
from ..data import PreparedData, prepare_data
from ..data.sources import parse_sources
from ..engine.train_config import TrainConfig
from ..errors import ConfigError
from ..utils import write_json
from .evaluate import evaluate_run
from .scoring import open_run

__all__ = ["score_holdout", "split_sources"]


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


#: What :func:`score_holdout` adds to each split's scores under ``shift``: given the run
#: folder, the prepared held-out source and the split.
ShiftSummary = Callable[[Path, PreparedData, str, bool], dict[str, Any]]


def score_holdout(
    run_dir: str | os.PathLike[str],
    config: TrainConfig,
    *,
    shift: ShiftSummary | None = None,
    progress: bool = True,
) -> dict[str, Any] | None:
    """Score the held-out source of a finished run on its validation and test splits (see
    the module docstring) and write ``holdout.json``; ``None`` without ``holdout_source``.

    ``shift`` (the trainer passes :func:`cxrlab.shift.report.holdout_shift`) adds whether
    the run would have seen the source coming.
    """
    _, held = split_sources(config)
    if not held:
        return None
    run_dir = Path(run_dir)
    data, class_map, sources_csv, patients = held
    prepared = prepare_data(
        data, class_map=class_map, sources_csv=sources_csv, split_seed=config.split_seed,
        ratios=config.ratios, near_copies=config.near_copies, patients=patients,
        progress=progress,
        **open_run(run_dir).preparation().replace(doubtful="skip").kwargs(),
    )  # fmt: skip
    out: dict[str, Any] = {"source": config.holdout_source}
    for split in ("val", "test"):
        m = evaluate_run(run_dir, data=prepared, split=split, progress=progress)
        m.pop("routing_paths", None)
        if shift is not None:
            m["shift"] = shift(run_dir, prepared, split, progress)
        out[split] = m
    write_json(run_dir / run_files.HOLDOUT, out)
    return out
