"""External test sets: finished runs scored on data from elsewhere, cached in the run folder.

An external set is a name, a dataset folder and a class map (see
:func:`~cxrlab.evaluation.other_data.match_classes`: a dataset class maps to a model class, two
may merge into one, ``-`` leaves one unscored). :func:`evaluate_external` scores a run on it
the way ``cxrlab evaluate --split all`` does: copies of the run's training and validation
images (exact and near) are found and left out first, the metrics cover the classes present,
and the routing says where each dataset class went. The result is kept in
``<run>/external/<name>.json`` (with the scored images' predictions beside it) under a key of
the set's data, class map and the run's model, so asking again costs nothing and a changed
set is scored again.

``cxrlab train --external NAME=PATH`` and studies (``[study] external = [...]``) use it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import run_files
from ..data import PreparedData, prepare_data
from ..errors import CheckpointError, ConfigError, CxrlabError
from ..evaluation.other_data import UNSCORED, match_classes, parse_class_map
from ..utils import hash_strings, write_json
from .card import RunCard
from .evaluate import evaluate_run
from .folder import RunDir, load_card, model_stamp
from .scoring import Preparation, open_run

__all__ = [
    "ExternalSet",
    "evaluate_external",
    "external_sets",
    "is_current",
    "parse_external",
    "read_external",
]


@dataclass(frozen=True)
class ExternalSet:
    """A dataset from elsewhere to score runs on.

    Attributes:
        name: a short name used in file names and report columns (letters, digits, ``_-``).
        data: the dataset folder (any layout ``cxrlab data scan`` reads); a study file may
            leave it empty for ``--external NAME=PATH`` to fill in.
        class_map: dataset class -> model class, or ``"-"`` to leave a class unscored;
            unmapped classes match by name and the database's aliases.
    """

    name: str
    data: str
    class_map: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "_-" for c in self.name):
            raise ConfigError(
                f"External set name {self.name!r}: use letters, digits, '_' and '-' only"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "data": self.data, "class_map": dict(self.class_map)}


def parse_external(text: str, class_maps: Mapping[str, str] | None = None) -> ExternalSet:
    """``"quex=../shared/cxr-masks"`` -> an :class:`ExternalSet`; ``class_maps`` holds
    ``--external-class-map`` texts by set name (``"Non-COVID=-,COVID-19=COVID"``)."""
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise ConfigError(f"--external looks like NAME=PATH (e.g. quex=data/qu-ex); got {text!r}")
    name = name.strip()
    return ExternalSet(name, path.strip(), parse_class_map((class_maps or {}).get(name)))


def parse_external_maps(texts: Iterable[str]) -> dict[str, str]:
    """``["quex=Non-COVID=-,COVID-19=COVID"]`` -> ``{"quex": "Non-COVID=-,COVID-19=COVID"}``."""
    out = {}
    for text in texts:
        name, sep, mapping = text.partition("=")
        if not sep or not name.strip() or not mapping.strip():
            raise ConfigError(
                "--external-class-map looks like NAME=DATASET_CLASS=MODEL_CLASS[,...] "
                f"(e.g. quex=Non-COVID=-); got {text!r}"
            )
        out[name.strip()] = mapping.strip()
    return out


def external_sets(
    entries: Iterable[Mapping[str, Any]], where: str = "[study] external"
) -> tuple[ExternalSet, ...]:
    """External sets from TOML tables (``{name = ..., data = ..., class_map = {...}}``).

    Raises:
        ConfigError: an unknown key, a missing name or data, a class map that is not a table
            of strings, or two sets with one name.
    """
    out: list[ExternalSet] = []
    for k, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where} #{k + 1}: expected a table {{name = ..., data = ...}}")
        unknown = set(entry) - {"name", "data", "class_map"}
        if unknown:
            raise ConfigError(
                f"{where} #{k + 1}: unknown key(s) {sorted(unknown)}; use name, data, class_map"
            )
        cmap = entry.get("class_map", {})
        if not isinstance(cmap, Mapping) or not all(
            isinstance(a, str) and isinstance(b, str) for a, b in cmap.items()
        ):
            raise ConfigError(
                f"{where} #{k + 1}: class_map must map dataset classes to model classes (or "
                f'"{UNSCORED}"), e.g. {{"COVID-19" = "COVID", "Non-COVID" = "{UNSCORED}"}}'
            )
        name, data = entry.get("name"), entry.get("data")
        if not isinstance(name, str) or not isinstance(data, str):
            raise ConfigError(f"{where} #{k + 1}: needs name and data (strings)")
        out.append(ExternalSet(name, data, dict(cmap)))
    names = [e.name for e in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"{where}: the name {twice[0]!r} is used twice")
    return tuple(out)


def prepare_external(
    ext: ExternalSet,
    classes: Iterable[str],
    preparation: Preparation,
    *,
    progress: bool = True,
) -> PreparedData:
    """Scan and decode an external set once (every image a test image), prepared as
    ``preparation`` says (a run's, :meth:`~cxrlab.runs.scoring.ScoringRun.preparation`;
    images without a valid lung mask are left out), and check that each of its classes maps
    onto ``classes``.

    Raises:
        CxrlabError: the folder is missing or holds no usable images, or a class is neither
            a model class nor mapped (one line naming it and the model's classes).
    """
    _check_folder(ext)
    prepared = prepare_data(ext.data, holdout_all=True, progress=progress,
                            **preparation.replace(doubtful="skip").kwargs())  # fmt: skip
    _check_classes(ext, prepared, classes)
    return prepared


def _check_folder(ext: ExternalSet) -> None:
    """Refuse a set without a data folder, or whose folder does not exist."""
    if not ext.data:
        raise ConfigError(
            f"External set {ext.name!r} names no data folder: give --external {ext.name}=PATH"
        )
    if not Path(ext.data).exists():
        raise ConfigError(f"External set {ext.name!r}: {ext.data} does not exist")


def _check_classes(ext: ExternalSet, prepared: PreparedData, classes: Iterable[str]) -> None:
    """Refuse a set with a class that is neither a model class nor mapped."""
    match_classes(prepared.classes, list(classes), dict(ext.class_map),
                  where=f"the study's models (external set {ext.name!r})")  # fmt: skip


def _key(ext: ExternalSet, prepared: PreparedData, run_dir: Path, card: RunCard) -> str:
    """What an external result depends on: the set's images, class map and known patients,
    the run's model."""
    data_hash = prepared.report.fingerprint()
    created, size = model_stamp(run_dir, card)
    cmap = json.dumps(dict(sorted(ext.class_map.items())))
    parts = [data_hash, cmap, size, created]
    if card.lungs != "keep":
        # results of such runs from before copies were found on whole images are stale
        parts.append("copies-on-whole-images")
    if prepared.split.patients:  # results from before patients were left out are stale
        parts.append("patients:" + hash_strings(prepared.split.patients))
    return hash_strings(parts)


def is_current(run_dir: str | os.PathLike[str], ext: ExternalSet, prepared: PreparedData) -> bool:
    """Whether the run's stored result on ``ext`` was computed on these images, with this
    class map and this model (else :func:`evaluate_external` scores it again)."""
    if not RunDir(run_dir).finished:
        return False
    stored = read_external(run_dir, ext.name)
    return stored is not None and stored.get("key") == _key(
        ext, prepared, Path(run_dir), load_card(run_dir)
    )


def read_external(run_dir: str | os.PathLike[str], name: str) -> dict[str, Any] | None:
    """A run's stored result on external set ``name`` (metrics, or ``{"error": ...}``)."""
    path = Path(run_dir) / run_files.EXTERNAL_DIR / f"{name}.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def evaluate_external(
    run_dir: str | os.PathLike[str],
    ext: ExternalSet,
    prepared: PreparedData | None = None,
    *,
    batch_size: int = 64,
    device: str = "auto",
    progress: bool = True,
) -> tuple[dict[str, Any], bool]:
    """A finished run's metrics on an external set, from its cache when it is current.

    Args:
        run_dir: a finished run folder.
        ext: the external set.
        prepared: the set, already prepared at the run's size and lungs mode (see
            :func:`prepare_external`; a study prepares each set once for all its cells).

    Returns:
        ``(result, computed)``: ``result`` is :func:`~cxrlab.runs.evaluate_run`'s metrics
        over the set with copies of the run's training and validation images left out, plus
        ``name`` and ``key``; or ``{"name", "key", "error"}`` when no number can honestly be
        given (no scorable image after copies are removed, say): such errors are kept too, so
        a second call says the same without scoring again. ``computed`` is ``False`` when the
        result came from the cache.

    Raises:
        CxrlabError: the set cannot be read, or the run is not a finished run.
        CheckpointError: the set is the run's own training data.
    """
    run_dir = Path(run_dir)
    run = open_run(run_dir)
    card = run.card
    if not isinstance(card, RunCard):
        raise CheckpointError(f"{run_dir} is an ensemble folder, not one run")
    if prepared is None:  # the set prepared as the run's own images were
        _check_folder(ext)
        prepared = run.prepare(ext.data, "all", progress=progress)
        _check_classes(ext, prepared, run.classes)
    data_hash = prepared.report.fingerprint()
    if data_hash == card.data.data_hash:
        raise CheckpointError(
            f"External set {ext.name!r} ({ext.data}) is the data {run_dir} was trained on; an "
            "external set must be other data (score the run's own test split with "
            "'cxrlab evaluate')"
        )
    key = _key(ext, prepared, run_dir, card)
    cached = read_external(run_dir, ext.name)
    if cached is not None and cached.get("key") == key:
        return cached, False
    folder = run_dir / run_files.EXTERNAL_DIR
    folder.mkdir(exist_ok=True)
    head = {"name": ext.name, "key": key, "set": ext.to_dict()}
    try:
        metrics = evaluate_run(run_dir, prepared, split="all", batch_size=batch_size,
                               device=device, class_map=dict(ext.class_map),
                               predictions=folder / f"{ext.name}.predictions.csv",
                               progress=progress)  # fmt: skip
    except CheckpointError as e:
        result = head | {"error": str(e)}
    else:
        result = head | metrics
    write_json(folder / f"{ext.name}.json", result)
    return result, True


def describe_result(result: Mapping[str, Any]) -> str:
    """One line: an external set's accuracy, copies left out, and a flag where it is not
    external."""
    name = result.get("name", "?")
    if "error" in result:
        return f"external {name}: not scored: {result['error']}"
    text = (f"external {name}: accuracy {result['accuracy']:.4f}  macro-F1 "
            f"{result['macro_f1']:.4f}  AUROC {result['auroc'] or float('nan'):.4f}  ECE "
            f"{result['ece']:.4f} on {result['n']} images ({result.get('excluded_copies', 0)} "
            "copies of training/validation images"
            + (f" and {result['excluded_patients']} images of their patients"
               if result.get("excluded_patients") else "")
            + (f" and {result['excluded_pretraining']} images its pretraining saw"
               if result.get("excluded_pretraining") else "") + " left out)")  # fmt: skip
    if result.get("not_external"):
        text += f"  NOT EXTERNAL: {result['copy_share']:.0%} of its images copy the run's data"
    return text


def evaluate_externals(
    run_dir: str | os.PathLike[str],
    sets: Iterable[ExternalSet],
    *,
    device: str = "auto",
    progress: bool = True,
    echo: Any = print,
) -> dict[str, dict[str, Any]]:
    """Score a run on every set; a set that cannot be read is one line, and the others go on."""
    out = {}
    for ext in sets:
        try:
            result, _ = evaluate_external(run_dir, ext, device=device, progress=progress)
        except CxrlabError as e:
            echo(f"external {ext.name}: skipped: {e}")
            continue
        echo(describe_result(result))
        out[ext.name] = result
    return out
