"""The model card of a run, typed: one module that reads, checks and writes it.

A run folder's ``model_card.json`` says everything needed to use and to trust its model:
architecture, classes, preprocessing, starting weights, freezing, data and split hashes,
training settings, calibration, versions. An ensemble folder's card
(``cxrlab-ensemble/1``) names its member runs. Both are read here into dataclasses, once,
and every part of cxrlab reads the dataclasses, never the JSON keys.

The format is versioned (``cxrlab-model-card/1``). Cards of older cxrlab runs lack parts
that came later (a run's lungs mode, its segmenter, its sources, its calibration); the
reader gives those parts the value they had before they were recorded (whole images, no
segmenter, one dataset folder, no calibration), so runs already on disk keep loading. A card
of a newer format version is refused with one line, never half-read.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import run_files
from ..engine.train_config import TrainConfig
from ..errors import CheckpointError, ConfigError
from ..freeze import FreezeReport
from ..models.classifier import PreprocessConfig
from ..models.init import InitReport
from ..typed_config import check_format

__all__ = [
    "CARD_FORMAT",
    "ENSEMBLE_FORMAT",
    "AdaptationRecord",
    "Calibration",
    "DataRecord",
    "EnsembleCard",
    "MemberRecord",
    "PretrainingRecord",
    "RunCard",
    "TrainingRecord",
    "read_card",
]

CARD_FORMAT = "cxrlab-model-card/1"
ENSEMBLE_FORMAT = "cxrlab-ensemble/1"


def _fields(cls: type, record: dict[str, Any], where: str) -> dict[str, Any]:
    """The keyword arguments of dataclass ``cls`` found in ``record``: keys it does not know
    (written by a newer cxrlab of the same format version) are passed over; a required field
    that is missing is an error naming it."""
    if not isinstance(record, dict):
        raise CheckpointError(f"{where} is not a JSON object")
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in record:
            out[f.name] = record[f.name]
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise CheckpointError(f"{where} has no {f.name!r}")
    return out


@dataclass(frozen=True)
class DataRecord:
    """The data a run trained on: where, which images (hashes), which split, its lungs."""

    root: str  # the dataset folder (or a cached view of several sources)
    data_hash: str  # fingerprint of the images (cxrlab.data.DatasetReport.fingerprint)
    split_hash: str  # fingerprint of the split (which image is in which part)
    split_seed: int
    ratios: tuple[float, ...]
    split_source: str  # "stratified", "folders" or a split file
    counts: dict[str, dict[str, int]]  # part -> class -> images
    lungs: str = "keep"  # keep, remove, only or crop (runs from before lungs modes: keep)
    masks_from: dict[str, Any] | None = None  # the segmenter's identity (None: mask files)
    doubtful: str = "refuse"  # the rule for images without a valid lung mask
    left_out: int = 0  # images without a valid lung mask, left out
    sources: dict[str, Any] | None = None  # several sources: built_from and images per cell
    # known patients (cxrlab.data.Split.patient_summary) and the rules given; None: none known
    patients: dict[str, Any] | None = None

    @property
    def segmenter(self) -> str | None:
        """The folder of the lung segmenter the run's masks came from, or ``None``."""
        return (self.masks_from or {}).get("run")

    @classmethod
    def from_dict(cls, record: dict[str, Any], where: str = "data") -> DataRecord:
        d = _fields(cls, record, where)
        d["ratios"] = tuple(d["ratios"])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"ratios": list(self.ratios)}


@dataclass(frozen=True)
class AdaptationRecord:
    """How an adapted run came from its parent (``cxrlab adapt``, :mod:`cxrlab.adapt`)."""

    parent: str  # the parent run's folder
    parent_created: str  # the parent's ``created``: which model was adapted
    site: str  # the site's folder
    site_hash: str  # fingerprint of the site's images
    method: str  # the unlabelled part: "none", "bn", "prior", "bn+prior", "tent", ...
    labels: int  # labelled images per class used (0: none)
    pool: int  # site images adaptation read
    test: int  # site images it never read (scored in adaptation.json)
    split_seed: int
    test_share: float
    changed: dict[str, Any] = dataclasses.field(default_factory=dict)
    scope: str = ""  # what the labelled images fine-tuned ("": no labels)
    draw_seed: int = 0  # the seed that drew the labelled images
    labelled_images: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def from_dict(cls, record: dict[str, Any], where: str = "adaptation") -> AdaptationRecord:
        return cls(**_fields(cls, record, where))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PretrainingRecord:
    """The ``cxrlab pretrain`` run a run's backbone came from (``--weights pretrained:RUN``),
    and whether that pretraining saw this run's validation or test images."""

    run: str  # the pretraining run's folder
    method: str  # simsiam, byol
    init: str  # what the pretraining started from: imagenet or none
    images: int  # images it pretrained on
    images_hash: str  # fingerprint of their content hashes
    weights_sha256: str  # of its backbone.safetensors
    eval_images_seen: int = 0  # this run's validation and test images it saw (copies too)
    allow_transductive: bool = False  # --allow-transductive was given

    @classmethod
    def from_dict(cls, record: dict[str, Any], where: str = "pretraining") -> PretrainingRecord:
        return cls(**_fields(cls, record, where))


def _preprocessing(record: dict[str, Any], where: str) -> PreprocessConfig:
    pre = _fields(PreprocessConfig, record, f"{where}: preprocessing")
    return PreprocessConfig(**pre | {"mean": tuple(pre["mean"]), "std": tuple(pre["std"])})


@dataclass(frozen=True)
class Calibration:
    """Temperature scaling fitted on the run's validation split, and what it changed."""

    temperature: float = 1.0
    fitted_on: str = "val"
    val_nll_before: float | None = None
    val_nll_after: float | None = None
    test_nll_before: float | None = None
    test_nll_after: float | None = None
    test_ece_before: float | None = None
    test_ece_after: float | None = None

    @classmethod
    def from_dict(cls, record: dict[str, Any], where: str = "calibration") -> Calibration:
        return cls(**_fields(cls, record, where))


@dataclass(frozen=True)
class TrainingRecord:
    """How the run trained: its seed, best epoch, device, precision and every setting."""

    seed: int
    best_epoch: int
    best_val_loss: float
    epochs: int
    device: str
    precision: str  # "fp32", "bfloat16", "float16"
    config: TrainConfig
    test_accuracy: float | None = None  # written once the run is tested

    @classmethod
    def from_dict(cls, record: dict[str, Any], where: str = "training") -> TrainingRecord:
        d = _fields(cls, record, where)
        d["config"] = _train_config(d["config"], f"{where}.config")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["config"] = self.config.to_dict()
        if self.test_accuracy is None:  # not tested yet: as cards have always been written
            del d["test_accuracy"]
        return d


def _train_config(saved: dict[str, Any], where: str) -> TrainConfig:
    """A run's settings as a :class:`TrainConfig`; a setting newer than the run takes its
    default (the value it had before it existed)."""
    if not isinstance(saved, dict):
        raise CheckpointError(f"{where} is not a JSON object")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        return TrainConfig.from_dict({k: v for k, v in saved.items() if k in known})
    except ConfigError as e:
        raise CheckpointError(f"{where} cannot be read: {e}") from e


class _Card:
    """What run and ensemble cards share: the facts derived from their preprocessing and
    data, and ``card["key"]``/``card.get("key")`` reads of their JSON form for code written
    when cards were dicts (deprecated: read the fields)."""

    preprocessing: PreprocessConfig
    data: DataRecord

    @property
    def image_size(self) -> int:
        """The square input size."""
        return int(self.preprocessing.image_size)

    @property
    def lungs(self) -> str:
        """The lungs mode of the training images: ``keep``, ``remove``, ``only`` or ``crop``."""
        return self.data.lungs

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - defined by each card
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        warnings.warn(
            f"card[{key!r}] is deprecated: cards are typed now (card.{key})",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        """The JSON form's value of ``key`` (deprecated, like ``card[key]``)."""
        warnings.warn(
            f"card.get({key!r}) is deprecated: cards are typed now (card.{key})",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.to_dict().get(key, default)


@dataclass(frozen=True)
class RunCard(_Card):
    """A trained run's model card (``model_card.json``, format :data:`CARD_FORMAT`)."""

    model: str  # the registry name (cxrlab.models)
    architecture: str  # "timm:tf_efficientnet_lite0", "torchvision:resnet18", ...
    classes: tuple[str, ...]
    preprocessing: PreprocessConfig
    weights: str  # where the starting weights came from, in words
    freeze: FreezeReport
    data: DataRecord
    training: TrainingRecord
    versions: dict[str, Any]
    created: str  # ISO time, UTC
    initialisation: InitReport | None = None  # what a redrawn initialisation redrew
    calibration: Calibration | None = None
    adaptation: AdaptationRecord | None = None  # an adapted run: its parent, site, method
    pretraining: PretrainingRecord | None = None  # --weights pretrained:RUN: that run
    format: str = CARD_FORMAT

    # ---------------------------------------------------------------- derived facts
    @property
    def temperature(self) -> float:
        """The calibration temperature (1: none)."""
        return self.calibration.temperature if self.calibration is not None else 1.0

    @property
    def tta(self) -> bool:
        """Whether the run is scored with test-time augmentation (its ``--tta``)."""
        return bool(self.training.config.tta)

    @property
    def seed(self) -> int:
        return int(self.training.seed)

    def replace(self, **changes: Any) -> RunCard:
        return dataclasses.replace(self, **changes)

    # ---------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        """The card as JSON-ready data, in the order cards have always been written."""
        out = {
            "format": self.format,
            "model": self.model,
            "architecture": self.architecture,
            "classes": list(self.classes),
            "preprocessing": self.preprocessing.to_dict(),
            "weights": self.weights,
            "initialisation": self.initialisation.to_dict() if self.initialisation else None,
            "freeze": self.freeze.to_dict(),
            "data": self.data.to_dict(),
            "training": self.training.to_dict(),
            "versions": self.versions,
            "created": self.created,
        }
        if self.calibration is not None:
            out["calibration"] = dataclasses.asdict(self.calibration)
        if self.adaptation is not None:
            out["adaptation"] = self.adaptation.to_dict()
        if self.pretraining is not None:
            out["pretraining"] = dataclasses.asdict(self.pretraining)
        return out

    @classmethod
    def from_dict(cls, card: dict[str, Any], where: str = run_files.CARD) -> RunCard:
        """Read a card of this format version or an older one (see the module docstring).

        Raises:
            CheckpointError: another format, or a part missing or of the wrong shape.
        """
        check_format(card, CARD_FORMAT, where)
        d = _fields(cls, card, where)
        try:
            d["preprocessing"] = _preprocessing(d["preprocessing"], where)
            d["freeze"] = FreezeReport(**_fields(FreezeReport, d["freeze"], f"{where}: freeze"))
            d["data"] = DataRecord.from_dict(d["data"], f"{where}: data")
            d["training"] = TrainingRecord.from_dict(d["training"], f"{where}: training")
            if d.get("initialisation") is not None:
                init = d["initialisation"]
                d["initialisation"] = InitReport(**_fields(InitReport, init, f"{where}: init"))
            if d.get("calibration") is not None:
                d["calibration"] = Calibration.from_dict(d["calibration"], f"{where}: cal")
            if d.get("adaptation") is not None:
                d["adaptation"] = AdaptationRecord.from_dict(d["adaptation"], f"{where}: adapt")
            if d.get("pretraining") is not None:
                d["pretraining"] = PretrainingRecord.from_dict(d["pretraining"], f"{where}: pre")
        except (TypeError, KeyError) as e:
            raise CheckpointError(f"{where} cannot be read ({type(e).__name__}: {e})") from e
        d["classes"] = tuple(d["classes"])
        return cls(**d)


@dataclass(frozen=True)
class MemberRecord:
    """One member of an ensemble, as its card names it."""

    path: str  # the member's run folder, relative to the ensemble folder
    model: str = ""
    weights: str = ""
    freeze: str | None = None
    seed: int | None = None
    best_val_loss: float | None = None
    test_accuracy: float | None = None
    temperature: float = 1.0


@dataclass(frozen=True)
class EnsembleCard(_Card):
    """An ensemble folder's card (format :data:`ENSEMBLE_FORMAT`): its members, and what
    they share (classes, preprocessing, data), which is the first member's."""

    members: tuple[MemberRecord, ...]
    model: str  # the members' models, joined by "+"
    architecture: str
    classes: tuple[str, ...]
    preprocessing: PreprocessConfig
    data: DataRecord
    created: str = ""
    description: str = ""
    format: str = ENSEMBLE_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "description": self.description,
            "members": [dataclasses.asdict(m) for m in self.members],
            "model": self.model,
            "architecture": self.architecture,
            "classes": list(self.classes),
            "preprocessing": self.preprocessing.to_dict(),
            "data": self.data.to_dict(),
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, card: dict[str, Any], where: str = run_files.CARD) -> EnsembleCard:
        check_format(card, ENSEMBLE_FORMAT, where)
        d = _fields(cls, card, where)
        try:
            d["preprocessing"] = _preprocessing(d["preprocessing"], where)
            d["data"] = DataRecord.from_dict(d["data"], f"{where}: data")
            d["members"] = tuple(MemberRecord(**_fields(MemberRecord, m, f"{where}: member"))
                                 for m in d["members"])  # fmt: skip
        except (TypeError, KeyError) as e:
            raise CheckpointError(f"{where} cannot be read ({type(e).__name__}: {e})") from e
        d["classes"] = tuple(d["classes"])
        return cls(**d)

    @classmethod
    def of_runs(cls, cards: list[RunCard], paths: list[str], description: str = "",
                created: str = "") -> EnsembleCard:  # fmt: skip
        """The card of an ensemble of runs with ``cards`` at ``paths``."""
        first = cards[0]
        members = tuple(
            MemberRecord(p, c.model, c.weights, c.freeze.policy, c.seed,
                         c.training.best_val_loss, c.training.test_accuracy, c.temperature)
            for p, c in zip(paths, cards)
        )  # fmt: skip
        return cls(
            members,
            "+".join(dict.fromkeys(c.model for c in cards)),
            "+".join(dict.fromkeys(c.architecture for c in cards)),
            first.classes,
            first.preprocessing,
            first.data,
            created,
            description or f"the average of {len(cards)} runs' probabilities",
        )


#: The cards cxrlab reads, by format.
Card = RunCard | EnsembleCard

_VERSIONS = {CARD_FORMAT: RunCard, ENSEMBLE_FORMAT: EnsembleCard}


def read_card(path: str | os.PathLike[str]) -> Card:
    """A card file (``model_card.json``) read into a :class:`RunCard` or
    :class:`EnsembleCard`, by its format.

    Raises:
        CheckpointError: the file is missing, not JSON, or not a card cxrlab can read.
    """
    path = Path(path)
    try:
        card = json.loads(path.read_text())
    except OSError as e:
        raise CheckpointError(f"Cannot read {path} ({e.strerror})") from e
    except ValueError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(card, dict):
        raise CheckpointError(f"{path} is not a cxrlab model card (not a JSON object)")
    kind = str(card.get("format", "")).rpartition("/")[0]
    for fmt, cls in _VERSIONS.items():
        if kind == fmt.rpartition("/")[0]:
            return typing.cast(Card, cls.from_dict(card, str(path)))
    raise CheckpointError(f"{path} is not a cxrlab model card (format {card.get('format')!r})")
