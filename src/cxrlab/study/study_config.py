"""Study configuration: a TOML file naming the data, shared settings and a grid of cells.

Example (``configs/original.toml``)::

    [study]
    name = "original"
    seeds = 1                 # or an explicit list: [0, 1, 2]
    split_seed = 0

    [train]                   # any TrainConfig key, shared by every cell
    epochs = 10
    lr = 1e-3

    [[cells]]                 # a mini-grid: list values are crossed
    model = ["resnet18", "resnet34"]
    weights = "imagenet"
    freeze = ["head", "0.5", "0.75"]

    [[cells]]
    model = "vit_b_16"
    weights = "imagenet"
    freeze = "last:4"
    label = "Pretrained, last 4 blocks trained"   # optional row label

Every ``[[cells]]`` entry may override any ``[train]`` key. Each expanded cell is one
(model, weights, freeze, overrides) combination run once per seed, with a stable id.

A training option given as ``{search = [...]}`` (in ``[train]`` or a cell) is tuned: every
candidate is trained as a trial cell of its own (``resnet18-in1k-full-lr0.0003-s0``), and per
cell and seed the trial with the best validation loss (``[study] select = "val_acc"`` for
validation accuracy) stands for the cell in the results and comparisons; the test split
never steers the choice::

    [train]
    lr = {search = [1e-4, 3e-4, 1e-3]}

An optional ``[audit]`` table audits every finished cell for shortcuts (``cxrlab audit``) and
puts the findings in the report::

    [audit]
    checks = ["copies", "lungs", "cam", "probes"]   # the default: all of them
    split = "test"
    cam_images = 200

Cells may differ in the initialisation (``weights = ["imagenet", "stats", "none"]``:
weight transfer, statistics transfer, random init) and in the amount of training data
(``train_size = [0.1, 0.3, 1.0]`` fractions, or counts per class such as ``[50, 200]``;
nested, the same images for every cell and seed). An optional ``[analysis]`` table runs the
feature-reuse analysis (``cxrlab analyze reuse``) over the finished cells::

    [analysis]
    reuse = true
    max_images = 300      # test images measured (every class in proportion)
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..data.split import train_size_label
from ..engine import TrainConfig
from ..errors import ConfigError
from ..freeze import parse_freeze
from ..models import parse_weights
from ..typed_config import from_dict

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "ADAPTED_DIR",
    "FINAL_DIR",
    "AdaptSettings",
    "AnalysisSettings",
    "AuditSettings",
    "Cell",
    "StudyConfig",
    "StudySettings",
    "arm_label",
    "load_study_config",
    "load_study_folder",
]


@dataclass(frozen=True)
class StudySettings:
    """The ``[study]`` table."""

    name: str = "study"
    description: str = ""
    data: str | tuple[str, ...] = "phantoms"  # a folder, or several sources ([NAME=]PATH)
    class_map: dict[str, Any] = dataclasses.field(default_factory=dict)  # per source
    sources_csv: dict[str, str] = dataclasses.field(default_factory=dict)  # per source
    # per source: a patient rule (cxrlab.data.patients; default: Kermany names where found)
    patients: dict[str, str] = dataclasses.field(default_factory=dict)
    seeds: int | tuple[int, ...] = 1
    split_seed: int = 0
    ratios: tuple[float, float, float] = (0.7, 0.15, 0.15)
    split_source: Literal["auto", "folders", "stratified"] = "auto"
    near_copies: bool = True  # near copies kept in one split, like exact copies
    external: tuple[Any, ...] = ()  # external test sets (ExternalSet), see the module doc
    alpha: float = 0.05  # significance level of the paired comparisons
    bootstrap: int = 2000  # paired-bootstrap resamples
    select: Literal["val_loss", "val_acc"] = "val_loss"  # how a search picks its candidate
    final: Literal["none", "best", "ensemble"] = "none"  # write <study>/final/ (see .final)
    #: what chooses the final training type: its validation loss, the validation NLL of
    #: the sources its leave-one-source-out cells held out, or the mean of both (see .final)
    final_by: Literal["val_loss", "holdout_val_nll", "val_and_holdout"] = "val_loss"
    jobs: int = 1  # cells run at once, each in its own process (see .runner)
    #: sites every finished cell is adapted to ([[study.adapt]] tables: AdaptSettings)
    adapt: tuple[Any, ...] = ()

    def source_options(self) -> dict[str, tuple[str, ...]]:
        """``class_map``, ``sources_csv`` and ``patients`` as
        :class:`~cxrlab.engine.TrainConfig` takes them (``NAME=FROM=TO,...``, ``NAME=FILE``
        and ``NAME=RULE``)."""
        maps = []
        for name, m in self.class_map.items():
            text = m if isinstance(m, str) else ",".join(f"{k}={v}" for k, v in m.items())
            maps.append(f"{name}={text}")
        return {"class_map": tuple(maps),
                "sources_csv": tuple(f"{k}={v}" for k, v in self.sources_csv.items()),
                "patients": tuple(f"{k}={v}" for k, v in self.patients.items())}  # fmt: skip

    def __post_init__(self) -> None:
        from ..runs.external_sets import ExternalSet, external_sets

        for name, m in self.class_map.items():
            if not isinstance(m, (str, dict)) or (
                isinstance(m, dict) and not all(isinstance(v, str) for v in m.values())
            ):
                raise ConfigError(
                    f"[study] class_map.{name} must be a table of dataset class = class, or "
                    '"FROM=TO,..."'
                )
        if not all(isinstance(e, ExternalSet) for e in self.external):
            object.__setattr__(self, "external", external_sets(self.external))
        adapt = tuple(a if isinstance(a, AdaptSettings) else _adapt_settings(a)
                      for a in self.adapt)  # fmt: skip
        object.__setattr__(self, "adapt", adapt)


#: Where a study keeps its cells' adapted runs: ``<study>/adapted/<cell id>/<site>-n<N>-d<draw>``.
ADAPTED_DIR = "adapted"
FINAL_DIR = "final"  # the study's chosen model (an ensemble folder)


@dataclass(frozen=True)
class AdaptSettings:
    """A ``[[study.adapt]]`` table: every finished cell is adapted to the external set
    ``site`` (``cxrlab adapt``) with each of ``labels`` labelled images per class, ``draws``
    draws of them (one for 0), and scored on the site's test part beside the unadapted run
    (results.csv and the report)::

        [[study.adapt]]
        site = "quex"             # an external set of the study
        labels = [0, 5, 25]
        draws = 3
    """

    site: str
    labels: tuple[int, ...] = (0,)
    draws: int = 1
    method: str = "prior"
    test_share: float = 0.5
    split_seed: int = 0

    def __post_init__(self) -> None:
        from ..adapt import METHODS

        if self.method not in METHODS:
            raise ConfigError(f"[[study.adapt]] method {self.method!r}: choose one of "
                              f"{', '.join(METHODS)}")  # fmt: skip
        if not self.labels or any(n < 0 for n in self.labels):
            raise ConfigError(f"[[study.adapt]] labels must be counts of 0 or more, "
                              f"got {list(self.labels)}")  # fmt: skip
        if self.draws < 1 or not 0 < self.test_share < 1:
            raise ConfigError("[[study.adapt]] draws must be 1 or more and test_share in (0, 1)")
        if self.method == "none" and 0 in self.labels:
            raise ConfigError("[[study.adapt]] method none with labels 0 changes nothing")

    def runs(self) -> list[tuple[int, int, str]]:
        """``(labels, draw, folder name)`` of each adapted run."""
        return [(n, d, f"{self.site}-n{n}-d{d}") for n in self.labels
                for d in range(self.draws if n else 1)]  # fmt: skip


def _adapt_settings(table: Any) -> AdaptSettings:
    if not isinstance(table, dict):
        raise ConfigError("[[study.adapt]] entries must be tables")
    table = dict(table)
    if isinstance(table.get("labels"), int):
        table["labels"] = [table["labels"]]
    return from_dict(AdaptSettings, table, "[[study.adapt]] ")


@dataclass(frozen=True)
class AuditSettings:
    """The ``[audit]`` table: which shortcut checks to run on every finished cell."""

    checks: tuple[str, ...] = ("copies", "lungs", "cam", "probes")
    split: str = "test"
    cam_images: int = 200

    def __post_init__(self) -> None:
        from ..audit import CHECKS

        bad = [c for c in self.checks if c not in CHECKS]
        if bad:
            raise ConfigError(f"[audit] checks: unknown {bad}; choose from {', '.join(CHECKS)}")
        if self.split not in ("train", "val", "test"):
            raise ConfigError("[audit] split must be train, val or test")
        if self.cam_images < 0:
            raise ConfigError("[audit] cam_images must be >= 0 (0 = every image)")


@dataclass(frozen=True)
class AnalysisSettings:
    """The ``[analysis]`` table: measurements over the finished cells, in the report.

    ``reuse`` runs ``cxrlab analyze reuse`` over every cell (per cell and seed, the chosen
    trial) and keeps each run's starting weights for it (``keep_init``).
    """

    reuse: bool = True
    split: Literal["test", "val"] = "test"
    max_images: int = 300
    bank_images: int = 2000
    batch_size: int = 50
    reinit: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 4:
            raise ConfigError("[analysis] batch_size must be at least 4 (CKA's estimator)")
        if self.max_images < 0 or self.bank_images < 0:
            raise ConfigError("[analysis] max_images and bank_images must be >= 0 (0 = all)")


@dataclass(frozen=True)
class Cell:
    """One training run of the study.

    A cell with a search space (``lr = {search = [...]}``) expands into one *trial* cell per
    candidate; ``selects`` is then the id the chosen trial stands for in the results (the
    cell's id without the candidate), and ``trial`` the candidate's values.
    """

    id: str
    label: str  # the training type: a row of the summary tables
    model: str
    seed: int
    config: TrainConfig
    selects: str | None = None
    trial: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)

    @property
    def group(self) -> str:
        """The cell without its seed: runs that differ only by seed share a group."""
        return without_seed(self.selects or self.id)


@dataclass(frozen=True)
class StudyConfig:
    """A parsed study file: settings, shared training options, and the expanded cells."""

    settings: StudySettings
    train: dict[str, Any]
    cells: tuple[Cell, ...]
    source: str  # the TOML text, kept for the report
    path: Path | None = None
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # from the command line
    audit: AuditSettings | None = None  # the [audit] table, when the study asks for audits
    analysis: AnalysisSettings | None = None  # the [analysis] table

    @property
    def seeds(self) -> tuple[int, ...]:
        s = self.settings.seeds
        return tuple(range(s)) if isinstance(s, int) else tuple(s)


def without_seed(cell_id: str) -> str:
    """A cell id without its ``-s<seed>`` suffix (``resnet18-in1k-head-s1`` -> ``...-head``)."""
    return cell_id.rsplit("-s", 1)[0]


def arm_label(weights: str, freeze: str, lungs: str = "keep", train_size: float = 1.0,
              holdout_source: str | None = None) -> str:  # fmt: skip
    """A readable training type, in the original study's terms."""
    label = _arm_label(weights, freeze)
    if lungs != "keep":
        label = f"{label}, {_LUNGS[lungs]}"
    if holdout_source:
        label = f"{label}, without {holdout_source}"
    return label if train_size == 1 else f"{label}, {train_size_label(train_size)}"


_LUNGS = {"remove": "lungs removed", "only": "lungs only", "crop": "lungs cropped"}


def _size_tag(train_size: float) -> str:
    return (
        ""
        if train_size == 1
        else (f"-n{train_size * 100:g}pc" if train_size < 1 else f"-n{train_size:g}")
    )


def _arm_label(weights: str, freeze: str) -> str:
    policy = parse_freeze(freeze)
    ws = parse_weights(weights)
    if weights == "imagenet":
        prefix = "Pretrained"
    elif weights == "none":
        prefix = "From scratch"
    elif ws.kind == "stats":
        prefix = "Statistics transfer"
    elif ws.kind == "transfusion":
        prefix = f"Pretrained first {ws.keep} units, statistics above"
    elif ws.kind == "pretrained":
        prefix = f"X-ray pretrained ({Path(ws.path).name})"
    else:
        prefix = f"Weights {Path(weights).name}"
    if policy.kind == "none":
        return "From scratch" if weights == "none" else f"{prefix}, fully fine-tuned"
    if policy.kind == "head":
        return f"{prefix}, head only"
    if policy.kind == "fraction":
        return f"{prefix}, {policy.value:.0%} frozen"
    return f"{prefix}, last {int(policy.value)} blocks trained"


def _tag(weights: str, freeze: str) -> str:
    policy = parse_freeze(freeze)
    ws = parse_weights(weights)
    w = {"imagenet": "in1k", "none": "scratch", "stats": "st"}.get(weights)
    if w is None:
        w = {"transfusion": f"tf{ws.keep}", "pretrained": f"pt-{Path(ws.path).name}"}.get(
            ws.kind, f"file-{Path(weights).stem}"
        )
    f = {"none": "full", "head": "head"}.get(policy.kind)
    if f is None:
        f = f"f{round(policy.value * 100):03d}" if policy.kind == "fraction" else str(policy)
        f = f.replace(":", "")
    return f"{w}-{f}"


def _expand(entry: dict[str, Any], index: int) -> list[dict[str, Any]]:
    """Cross the list-valued keys of one ``[[cells]]`` entry."""
    axes = {}
    for key, value in entry.items():
        # ratios is a list by nature; a list of lists is an axis
        is_axis = isinstance(value, list) and not (
            key == "ratios" and value and not isinstance(value[0], list)
        )
        axes[key] = value if is_axis else [value]
        if is_axis and not value:
            raise ConfigError(f"[[cells]] #{index + 1}: {key} is an empty list")
    keys = list(axes)
    return [dict(zip(keys, combo)) for combo in itertools.product(*axes.values())]


def _search_axes(table: dict[str, Any], where: str) -> dict[str, list[Any]]:
    """Pop ``key = {search = [...]}`` entries from ``table``: the values to try per key."""
    axes = {}
    for key, value in list(table.items()):
        if not isinstance(value, dict):
            continue
        if set(value) != {"search"} or not isinstance(value["search"], list) or not value["search"]:
            raise ConfigError(
                f"{where}{key}: a table here must be {{search = [candidate, ...]}} with at "
                f"least one candidate; got {value!r}"
            )
        axes[key] = list(value["search"])
        del table[key]
    return axes


def _trial_tag(trial: dict[str, Any]) -> str:
    """A readable, file-name-safe id part for one candidate: ``lr0.0003-wd0.05``."""
    short = {"lr": "lr", "weight_decay": "wd", "warmup_epochs": "wu", "label_smoothing": "ls"}
    parts = []
    for key, value in trial.items():
        text = f"{value:g}" if isinstance(value, float) else str(value)
        parts.append(short.get(key, key.replace("_", "")) + text.replace("/", "_"))
    return "-".join(parts)


def _parse(data: dict[str, Any], source: str, path: Path | None,
           overrides: dict[str, Any]) -> StudyConfig:  # fmt: skip
    unknown = set(data) - {"study", "train", "cells", "audit", "analysis"}
    if unknown:
        raise ConfigError(
            f"Unknown table(s) {sorted(unknown)} in the study file; expected "
            "[study], [train], [[cells]] and optionally [audit] and [analysis]"
        )
    audit = from_dict(AuditSettings, dict(data["audit"]), "[audit] ") if "audit" in data else None
    analysis = None
    if "analysis" in data:
        analysis = from_dict(AnalysisSettings, dict(data["analysis"]), "[analysis] ")
    settings, overrides = _settings(dict(data.get("study", {})), overrides)
    train, train_search = _train_table(dict(data.get("train", {})), overrides)
    entries = data.get("cells")
    if not isinstance(entries, list) or not entries:
        raise ConfigError("The study file needs at least one [[cells]] entry")
    bases = _bases(entries, train, train_search, reuse=analysis is not None and analysis.reuse)
    cells = _cells(bases, settings)
    given = {k: v for k, v in overrides.items() if v is not None and v != ()}
    if "external" in given:  # kept in study.json: plain tables
        given["external"] = [e.to_dict() for e in given["external"]]
    return StudyConfig(settings, train, tuple(cells), source, path, given, audit, analysis)


def _settings(table: dict[str, Any],
              overrides: dict[str, Any]) -> tuple[StudySettings, dict[str, Any]]:  # fmt: skip
    """``[study]`` with the command line's ``--seeds``, ``--data`` and ``--external``."""
    settings = from_dict(StudySettings, table, "[study] ")
    if isinstance(settings.seeds, int) and settings.seeds < 1:
        raise ConfigError("[study] seeds must be at least 1")
    if settings.jobs < 1:
        raise ConfigError("[study] jobs must be at least 1")
    if overrides.get("seeds") is not None:
        settings = dataclasses.replace(settings, seeds=int(overrides["seeds"]))
    if overrides.get("data") is not None:
        given = overrides["data"]
        data_ = str(given) if isinstance(given, (str, os.PathLike)) else tuple(map(str, given))
        if isinstance(data_, tuple) and len(data_) == 1:
            data_ = data_[0]
        settings = dataclasses.replace(settings, data=data_)
    if overrides.get("external"):  # --external NAME=PATH: added, or replacing one of that name
        from ..runs.external_sets import ExternalSet, external_sets

        sets = [e if isinstance(e, ExternalSet) else external_sets([e])[0]
                for e in overrides["external"]]  # fmt: skip
        # a set named in the file keeps the file's class map unless one is given
        in_file = {e.name: e for e in settings.external}
        sets = [dataclasses.replace(e, class_map=in_file[e.name].class_map)
                if e.name in in_file and not e.class_map else e for e in sets]  # fmt: skip
        overrides = overrides | {"external": tuple(sets)}
        given = {e.name: e for e in sets}
        kept = tuple(e for e in settings.external if e.name not in given)
        settings = dataclasses.replace(settings, external=kept + tuple(given.values()))
    names = {e.name for e in settings.external}
    for a in settings.adapt:
        if a.site not in names:
            raise ConfigError(
                f"[[study.adapt]] site {a.site!r} is not one of the study's external sets "
                f"({', '.join(sorted(names)) or 'none'}); name one ([study] external or "
                "--external NAME=PATH)"
            )
    return settings, overrides


def _train_table(
    train: dict[str, Any], overrides: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """``[train]`` (checked, with ``--epochs`` and ``--masks-from``) and its searched keys."""
    search = _search_axes(train, "[train] ")
    for forbidden in ("data", "split_file", "split_seed", "ratios", "split_source", "near_copies",
                      "class_map", "sources_csv", "patients", "seed"):  # fmt: skip
        if forbidden in train:
            raise ConfigError(
                f"[train] {forbidden} is set by the study; move it to [study]"
                if forbidden != "seed"
                else "[train] seed: use [study] seeds"
            )
    if overrides.get("epochs") is not None:
        train["epochs"] = int(overrides["epochs"])
    if overrides.get("masks_from") is not None:
        train["masks_from"] = str(overrides["masks_from"])
    # reject unknown keys and bad values early (masks_from serves the cells' lungs axis)
    TrainConfig.from_dict({k: v for k, v in train.items() if k != "masks_from"}, "[train] ")
    return train, search


#: Keys that define a cell (its id and row), never searched.
_DEFINING = ("model", "weights", "freeze", "lungs", "seed", "data", "split_file", "split_seed",
             "ratios", "split_source", "label", "train_size", "holdout_source")  # fmt: skip
#: A cell's base: (id without seed, label, options, its [[cells]] index, searched keys).
_Base = tuple[str, Any, dict[str, Any], int, dict[str, list[Any]]]


def _bases(entries: list[Any], train: dict[str, Any], train_search: dict[str, list[Any]], *,
           reuse: bool) -> list[_Base]:  # fmt: skip
    """Every ``[[cells]]`` entry expanded into its cells (one per combination), with ids and
    row labels; cells of one model told apart by their other options."""
    bases: list[_Base] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        if "model" not in entry:
            raise ConfigError(f"[[cells]] #{index + 1} has no model")
        entry = dict(entry)
        search = train_search | _search_axes(entry, f"[[cells]] #{index + 1} ")
        for key in search:
            if key in _DEFINING:
                raise ConfigError(f"[[cells]] #{index + 1} {key}: cannot be searched (it "
                                  "defines the cell, not its training)")  # fmt: skip
        for combo in _expand(entry, index):
            base = _base(combo, train, index, search, reuse)
            if base[0] in seen:
                raise ConfigError(f"Cell {base[0]} appears twice in the study file")
            seen.add(base[0])
            bases.append(base)
    # cells of one model that differ only in other options must not share a table row
    plain = Counter((o["model"], lab[0] if isinstance(lab, tuple) else lab)
                    for _, lab, o, _, _ in bases)  # fmt: skip
    for k, (base_id, label, options, index, search) in enumerate(bases):
        if isinstance(label, tuple):
            name, extras = label
            label = f"{name} ({extras})" if plain[(options["model"], name)] > 1 else name
            bases[k] = (base_id, label, options, index, search)
    return bases


def _base(combo: dict[str, Any], train: dict[str, Any], index: int,
          search: dict[str, list[Any]], reuse: bool) -> _Base:  # fmt: skip
    """One combination of a ``[[cells]]`` entry: its id (the named options, and a digest of
    the others), its label and its training options."""
    label = combo.pop("label", None)
    named = ("model", "weights", "freeze", "lungs", "train_size", "holdout_source")
    extra = {k: v for k, v in combo.items() if k not in named}  # hashed into the id
    if combo.get("holdout_source") == "none":  # the axis's cell that holds none out
        combo.pop("holdout_source")
    options = train | combo
    if options.get("lungs", "keep") == "keep":  # masks are not used: not settings
        options.pop("masks_from", None)
        options.pop("doubtful", None)
    if reuse:
        options["keep_init"] = True  # the reuse analysis reads the starting weights
    options.setdefault("weights", "imagenet")
    options.setdefault("freeze", "none")
    digest = ""
    if extra:
        blob = json.dumps(extra, sort_keys=True, default=str).encode()
        digest = "-" + hashlib.blake2b(blob, digest_size=3).hexdigest()
    lungs = {"remove": "-nolungs", "only": "-lungsonly", "crop": "-lungcrop"}.get(
        options.get("lungs", "keep"), ""
    )
    size = float(options.get("train_size", 1.0))
    held = options.get("holdout_source")
    base_id = (f"{options['model']}-{_tag(options['weights'], options['freeze'])}"
               f"{lungs}{_size_tag(size)}{f'-no{held}' if held else ''}{digest}")  # fmt: skip
    if label is None:
        label = arm_label(options["weights"], options["freeze"], options.get("lungs", "keep"),
                          size, held)  # fmt: skip
        if extra:  # told apart by _bases if another cell gets the same label
            label = (label, ", ".join(f"{k}={v}" for k, v in sorted(extra.items())))
    elif held:  # a cell that holds a source out tests on other images: never the same row
        label = f"{label}, without {held}"
    return base_id, label, options, index, search


def _cells(bases: list[_Base], settings: StudySettings) -> list[Cell]:
    """Every cell, seed-major: every cell's first seed finishes before any second seed
    starts; a searched cell becomes one trial cell per candidate."""
    seeds = tuple(range(settings.seeds)) if isinstance(settings.seeds, int) else settings.seeds
    shared = settings.source_options() | {
        "data": settings.data, "split_seed": settings.split_seed, "ratios": settings.ratios,
        "split_source": settings.split_source, "near_copies": settings.near_copies,
    }  # fmt: skip
    cells: list[Cell] = []
    for seed in seeds:
        for base_id, label, options, index, search in bases:
            trials = [dict(zip(search, combo)) for combo in itertools.product(*search.values())]
            for trial in trials or [{}]:
                cfg = TrainConfig.from_dict(options | trial | shared | {"seed": seed},
                                            f"[[cells]] #{index + 1} ")  # fmt: skip
                tag = f"-{_trial_tag(trial)}" if trial else ""
                cells.append(Cell(
                    id=f"{base_id}{tag}-s{seed}",
                    label=label,
                    model=options["model"], seed=seed, config=cfg,
                    selects=f"{base_id}-s{seed}" if trial else None, trial=trial,
                ))  # fmt: skip
    return cells


def load_study_config(
    path: str | os.PathLike[str],
    *,
    data: str | Sequence[str] | None = None,
    epochs: int | None = None,
    seeds: int | None = None,
    external: tuple[Any, ...] = (),
    masks_from: str | os.PathLike[str] | None = None,
) -> StudyConfig:
    """Read and check a study TOML file; ``data``, ``epochs`` and ``seeds`` override it,
    ``external`` (:class:`~cxrlab.runs.external_sets.ExternalSet`) adds external sets to
    ``[study] external`` (replacing one of the same name), and ``masks_from`` (a lung
    segmenter run) gives lung masks to the cells with ``lungs`` other than ``keep``.

    Raises:
        ConfigError: an unknown key or table (named, with a suggestion) or a bad value.
    """
    path = Path(path)
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"Cannot read the study file {path}: {e.strerror or e}") from e
    try:
        data_ = tomllib.loads(source)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from e
    overrides = {"data": data, "epochs": epochs, "seeds": seeds, "external": tuple(external),
                 "masks_from": masks_from}  # fmt: skip
    return _parse(data_, source, path, overrides)


def load_study_folder(study_dir: str | os.PathLike[str]) -> StudyConfig:
    """The study a folder of ``cxrlab study run`` holds: its ``study.toml`` with the
    command-line overrides it was run with (kept in ``study.json``).

    Raises:
        ConfigError: the folder has no ``study.toml``, or it does not parse.
    """
    study_dir = Path(study_dir)
    if not (study_dir / "study.toml").is_file():
        raise ConfigError(f"{study_dir} has no study.toml: not a folder of 'cxrlab study run'")
    state = study_dir / "study.json"
    overrides = json.loads(state.read_text()).get("overrides", {}) if state.exists() else {}
    return load_study_config(study_dir / "study.toml", **overrides)


def parse_study_config(text: str, **overrides: Any) -> StudyConfig:
    """Like :func:`load_study_config` for TOML text (tests, notebooks)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"Invalid TOML: {e}") from e
    return _parse(data, text, None, overrides)
