"""A run folder on disk (:class:`RunDir`): the model weights, its card, its metrics, split
and predictions, and loading them back safely.

``model.safetensors`` holds the weights with a small header (model name, classes);
``model_card.json`` holds everything needed to use and to trust the model: architecture,
classes, preprocessing, weights source, freezing, data and split hashes, seed, versions
(read and written as a typed :class:`~cxrlab.runs.card.RunCard`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from .. import run_files
from ..data import RESIZE_METHOD, PreparedData
from ..data.split import Split, load_split
from ..engine.train_config import TrainConfig
from ..errors import CheckpointError, ConfigError
from ..freeze import FreezeReport
from ..models import CxrClassifier, create_model, get_spec
from ..runtime import versions
from ..utils import write_json
from .card import CARD_FORMAT, DataRecord, PretrainingRecord, RunCard, TrainingRecord, read_card
from .metrics import RunMetrics

__all__ = [
    "CARD_FORMAT",
    "RunDir",
    "build_card",
    "load_card",
    "load_run_model",
    "model_stamp",
    "require_finished",
    "require_whole_images",
    "save_model",
    "save_weights",
    "write_predictions",
]


@dataclasses.dataclass(frozen=True)
class RunDir:
    """A run folder: where each of its files lies, whether it has finished, and its contents
    read back (the card checked and typed, the split as a :class:`~cxrlab.data.split.Split`).

    Example:
        >>> run = RunDir("runs/x")  # doctest: +SKIP
        >>> run.finished, run.card().model, run.metrics()["accuracy"]  # doctest: +SKIP
    """

    path: Path

    def __init__(self, path: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "path", Path(path))

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def card_file(self) -> Path:
        return self.path / run_files.CARD

    @property
    def model_file(self) -> Path:
        return self.path / run_files.MODEL

    @property
    def checkpoint_file(self) -> Path:
        return self.path / run_files.CHECKPOINT

    @property
    def config_file(self) -> Path:
        return self.path / run_files.CONFIG

    @property
    def metrics_file(self) -> Path:
        return self.path / run_files.METRICS

    @property
    def split_file(self) -> Path:
        return self.path / run_files.SPLIT

    @property
    def history_file(self) -> Path:
        return self.path / run_files.HISTORY

    @property
    def predictions_file(self) -> Path:
        return self.path / run_files.PREDICTIONS

    @property
    def finished(self) -> bool:
        """Training has finished: ``metrics.json`` is written last."""
        return self.metrics_file.is_file()

    @property
    def interrupted(self) -> bool:
        """A checkpoint and no metrics: training is running, or stopped before the end."""
        return self.checkpoint_file.is_file() and not self.finished

    def card(self) -> RunCard:
        """The run's card, checked (see :func:`load_card`)."""
        return load_card(self.path)

    def metrics(self) -> dict[str, Any]:
        """``metrics.json`` of a finished run.

        Raises:
            CheckpointError: the run has not finished.
        """
        if not self.finished:
            raise CheckpointError(f"{self.path} has no {run_files.METRICS}: not a finished run")
        return json.loads(self.metrics_file.read_text())

    def scores(self) -> RunMetrics:
        """``metrics.json`` of a finished run, typed (:class:`~cxrlab.runs.metrics.RunMetrics`).

        Raises:
            CheckpointError: the run has not finished, or the file cannot be read.
        """
        return RunMetrics.from_dict(self.metrics(), str(self.metrics_file))

    def split(self) -> Split:
        """The split the run trained on."""
        return load_split(self.split_file)

    def prepare(self, resume: bool) -> None:
        """Create the folder for training; refuse to overwrite a finished or interrupted run
        unless resuming.

        Raises:
            ConfigError: the folder holds a run and ``resume`` is false.
            CheckpointError: ``resume`` and the folder holds a run's files but no checkpoint.
        """
        finished, interrupted = self.finished, self.checkpoint_file.exists()
        if not resume and (finished or interrupted):
            what = ("a finished run" if finished else
                    "an interrupted run (continue it with resume=True, --resume)")  # fmt: skip
            raise ConfigError(
                f"{self.path} already holds {what}; choose another folder (out, --out)"
            )
        if resume and not interrupted and not finished and self.config_file.exists():
            raise CheckpointError(
                f"{self.path} has no {run_files.CHECKPOINT} to resume from; start a new run"
            )
        self.path.mkdir(parents=True, exist_ok=True)


def save_model(run_dir: str | os.PathLike[str], model: CxrClassifier, card: RunCard) -> Path:
    """Write ``model.safetensors`` (atomically) and ``model_card.json``."""
    path = save_weights(run_dir, model, card.model, card.classes)
    write_json(Path(run_dir) / run_files.CARD, card.to_dict())
    return path


def save_weights(
    run_dir: str | os.PathLike[str],
    model: CxrClassifier,
    name: str,
    classes: Sequence[str],
    file: str = run_files.MODEL,
) -> Path:
    """Write a weights file (atomically) whose header names the model and its classes, so
    weights are never loaded into another run's model (``init.safetensors``: the weights a
    run started from)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": CARD_FORMAT, "model": name, "classes": json.dumps(list(classes))}
    tmp = run_dir / f".{file}.tmp"
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, run_dir / file)
    return run_dir / file


def model_stamp(run_dir: str | os.PathLike[str], card: RunCard) -> list[str]:
    """What names a run's model for a cached result computed from it: its card's creation
    time (a retrained run is a new model) and the weights file's size."""
    model = Path(run_dir) / run_files.MODEL
    return [card.created, str(model.stat().st_size) if model.exists() else ""]


def load_card(run_dir: str | os.PathLike[str]) -> RunCard:
    """Read and check a run's model card (cards of older runs are upgraded on reading, see
    :mod:`.card`).

    Raises:
        CheckpointError: no such folder, a segmenter's or an ensemble's folder, no card, or a
            card cxrlab cannot read.
    """
    run_dir = Path(run_dir)
    path = run_dir / run_files.CARD
    if not run_dir.is_dir():
        raise CheckpointError(f"Run folder {run_dir} does not exist")
    if not path.is_file() and (run_dir / run_files.SEGMENTER_CARD).is_file():
        raise CheckpointError(
            f"{run_dir} is a lung segmenter run, not a classifier (train a classifier with "
            "'cxrlab train'; use a segmenter with 'cxrlab segment')"
        )
    if not path.is_file():
        raise CheckpointError(
            f"{run_dir} has no {run_files.CARD}: not a finished cxrlab run "
            "(train one with 'cxrlab train --out DIR')"
        )
    card = read_card(path)
    if not isinstance(card, RunCard):
        raise CheckpointError(f"{run_dir} is an ensemble folder, not one run")
    return card


def require_whole_images(card: RunCard, run: str | os.PathLike[str], what: str) -> None:
    """Refuse a run trained on images with their lungs removed, kept alone or cropped to,
    where ``what`` (an exported model) can only be given whole images: the segmenter and
    its post-processing run in Python, not inside an exported file.

    Raises:
        CheckpointError: the run's lungs mode is not ``keep``.
    """
    if card.lungs != "keep":
        raise CheckpointError(
            f"{run} was trained with --lungs {card.lungs}: {what} would be given whole images, "
            "and the lung segmenter and its post-processing cannot run inside it. Use "
            "'cxrlab predict', 'cxrlab serve' or cxrlab.load(run), which run them"
        )


def require_finished(run_dir: str | os.PathLike[str]) -> None:
    """Refuse a run whose training has not finished: while it trains (or after it was
    stopped) its folder already holds a card and the best epoch's weights so far.

    Raises:
        CheckpointError: the folder holds a training checkpoint and no ``metrics.json``.
    """
    run_dir = Path(run_dir)
    if RunDir(run_dir).interrupted:
        raise CheckpointError(
            f"{run_dir} has not finished training ({run_files.CHECKPOINT}, no "
            f"{run_files.METRICS}): its model "
            "is only the best epoch so far. Run the same 'cxrlab train' (or 'cxrlab study "
            "run') command again to finish it; it resumes where it stopped"
        )


def load_run_model(
    run_dir: str | os.PathLike[str],
    *,
    file: str = run_files.MODEL,
    finished: bool = True,
    card: RunCard | None = None,
) -> tuple[CxrClassifier, RunCard]:
    """Rebuild a run's model from its card and load its weights (no unpickling).

    ``card``: the run's card when the caller has read it already (read once).
    ``file="init.safetensors"`` loads the weights the run started from instead (written by
    ``--keep-init``). ``finished=False`` also loads the best epoch of a run still training
    (the trainer's own test does).

    Raises:
        CheckpointError: the card or weights are missing, the weights belong to another
            model or class list than the card describes, or (``finished``) the run has not
            finished training.
    """
    run_dir = Path(run_dir)
    if finished:
        require_finished(run_dir)
    card = card or load_card(run_dir)
    weights = run_dir / file
    if not weights.is_file() and file == run_files.INIT:
        raise CheckpointError(
            f"{run_dir} has no {run_files.INIT}: the weights it started from were not kept. "
            "Train it again with keep_init=True (--keep-init; in a study: [analysis] reuse = "
            "true)"
        )
    if not weights.is_file():
        raise CheckpointError(f"{run_dir} has a model card but no {file}")
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:  # header and tensors in one read
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    except Exception as e:  # safetensors raises its own error types per version
        raise CheckpointError(f"Cannot read {weights}: {e}") from e
    file_classes = json.loads(meta.get("classes", "null"))
    classes = list(card.classes)
    if meta.get("model") != card.model or file_classes != classes:
        raise CheckpointError(
            f"{weights} is for model {meta.get('model')!r} with classes {file_classes}, but the "
            f"card describes {card.model!r} with classes {classes}; the files come "
            "from different runs"
        )
    model = create_model(card.model, len(classes), "none", image_size=card.image_size)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes differ
        raise CheckpointError(
            f"{weights} does not fit {card.model} with "
            f"{len(classes)} classes: {str(e).splitlines()[1:2]}"
        ) from e
    if missing or unexpected:
        raise CheckpointError(
            f"{weights} does not fit {card.model}: missing {missing[:2]}, "
            f"unexpected {unexpected[:2]}"
        )
    model.eval()
    return model, card


def build_card(
    cfg: TrainConfig,
    data: PreparedData,
    model: CxrClassifier,
    freeze: FreezeReport,
    best_epoch: int,
    best_val_loss: float,
    device: torch.device,
    amp: torch.dtype | None,
    *,
    pretraining: PretrainingRecord | None = None,
) -> RunCard:
    """The model card: everything needed to use, reproduce and trust the model."""
    spec = get_spec(cfg.model)
    return RunCard(
        model=cfg.model,
        architecture=f"{spec.source}:{spec.arch}",
        classes=tuple(data.classes),
        preprocessing=dataclasses.replace(model.preprocess_config, resize=RESIZE_METHOD),
        weights=model.weights_source,  # type: ignore[attr-defined]
        initialisation=getattr(model, "init_report", None),
        freeze=freeze,
        data=DataRecord(
            root=str(data.report.root),
            data_hash=data.report.fingerprint(),
            split_hash=data.split.fingerprint(),
            split_seed=data.split.seed,
            ratios=tuple(data.split.ratios),
            split_source=data.split.source,
            counts=data.split.counts(),
            lungs=data.lungs,
            masks_from=_segmenter(cfg.masks_from),
            doubtful=cfg.doubtful,
            left_out=len(data.left_out),  # images without a valid lung mask, skipped
            sources=_sources(data),
            patients=_patients(data, cfg),
        ),
        training=TrainingRecord(
            seed=cfg.seed,
            best_epoch=best_epoch,
            best_val_loss=best_val_loss,
            epochs=cfg.epochs,
            device=str(device),
            precision=str(amp or "fp32").removeprefix("torch."),
            config=cfg,
        ),
        versions=versions(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        pretraining=pretraining,
    )


def _sources(data: PreparedData) -> dict[str, Any] | None:
    """The card's record of a run's sources: images per class and source, and the sources
    a view was built from (to build it again); ``None`` for one plain dataset folder."""
    from ..data.sources import class_source_table, view_sources

    spec = view_sources(data.report.root)
    if spec is None:
        return None
    split = data.split
    labels = [r.label for r in split.records]
    sources = [split.source_of(i) for i in range(len(labels))]
    return {"built_from": spec, "images": class_source_table(labels, sources)}


def _segmenter(masks_from: str | None) -> dict[str, Any] | None:
    """The card's record of the segmenter whose masks a run used (``None``: mask files)."""
    if not masks_from:
        return None
    from ..segment.apply import segmenter_id

    return segmenter_id(masks_from)


def _patients(data: PreparedData, cfg: TrainConfig) -> dict[str, Any] | None:
    """The card's record of the split's patients (how many known, grouped, across splits)
    and the rules given; ``None`` when no image's patient is known."""
    summary = data.split.patient_summary()
    if not summary["patients"]:
        return None
    return summary | {"rules": list(cfg.patients) or ["auto"]}


def write_predictions(
    path: str | os.PathLike[str],
    paths: list[str],
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: list[str] | tuple[str, ...],
) -> None:
    """Per-image predictions as CSV: path, true and predicted class, every probability.

    Studies pair runs image by image on the shared test set from these files.
    """
    import csv
    import io

    from ..utils import atomic_write_text

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "label", "pred", *(f"p_{c}" for c in classes)])
    for p, t, pr in zip(paths, y_true, probs):
        w.writerow([p, classes[int(t)], classes[int(pr.argmax())], *(f"{v:.6f}" for v in pr)])
    atomic_write_text(path, buf.getvalue())
