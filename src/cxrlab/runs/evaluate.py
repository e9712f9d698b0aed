"""``cxrlab evaluate`` for a finished run, and a finished run's probabilities."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import DecodedImages, PreparedData
from ..engine.batches import ImageBatches, predict_batches
from ..errors import CheckpointError
from ..evaluation import classification_metrics, expected_calibration_error
from ..evaluation.calibration import apply_temperature
from ..runtime import resolve_device, run_precision
from ..utils import write_json
from .card import RunCard
from .folder import load_run_model, write_predictions
from .scoring import open_run

__all__ = [
    "NOT_EXTERNAL_SHARE",
    "evaluate_run",
    "run_probabilities",
    "scored_positions",
]


def run_probabilities(
    member: str | os.PathLike[str],
    images: DecodedImages,
    rows: Sequence[int],
    device: torch.device,
    *,
    batch_size: int = 64,
    desc: str = "",
    progress: bool = False,
) -> tuple[np.ndarray, RunCard]:
    """A finished run's probabilities for ``rows`` of ``images``, as its own test computed
    them: its precision, its test-time augmentation, and, where it freezes a prefix of the
    backbone, the frozen-feature cache (:mod:`.features`), so a frozen prefix runs once per
    image however many runs share it (the seeds of a head-only cell, say).

    Returns:
        ``(probs, card)``: ``(len(rows), K)`` uncalibrated probabilities and the run's card.
    """
    from ..engine.features import TrainableRest, build_frozen_features, feature_cache_plan
    from ..freeze import apply_freeze

    model, card = load_run_model(member)
    model.to(device)
    amp, tta = run_precision(card.training.precision, device), card.tta
    cfg = card.training.config
    n_frozen = len(card.freeze.frozen_units)
    net: torch.nn.Module = model
    source, add_channel = images.array, True
    if n_frozen and not tta:
        apply_freeze(model, card.freeze.policy, cfg.freeze_bn)
        # at test time nothing random runs before the cut, whatever the training augmented
        cached, _ = feature_cache_plan(model, n_frozen, "none", cfg.freeze_bn, cfg.feature_cache)
        if cached:
            feats = build_frozen_features(model, n_frozen, images, device=device, amp=amp,
                                          batch_size=max(64, batch_size),
                                          dtype=cfg.feature_dtype,
                                          progress=progress)  # fmt: skip
            net, source, add_channel = TrainableRest(model, n_frozen), feats.array, False
    labels = np.zeros(len(images), dtype=np.int64)
    batches = ImageBatches(source, list(rows), labels, batch_size, add_channel=add_channel)
    probs, _, _ = predict_batches(net, batches, device, amp, desc=desc, progress=progress,
                                  tta=tta)  # fmt: skip
    return probs, card


def evaluate_run(
    run_dir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    data: str | os.PathLike[str] | PreparedData | None = None,
    *,
    split: str = "test",
    out: str | os.PathLike[str] | None = None,
    batch_size: int = 64,
    device: str = "auto",
    class_map: dict[str, str] | None = None,
    exclude_copies: bool = True,
    predictions: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Metrics of a finished run's model on a dataset.

    The images are prepared as the run's were: its input size and its lungs mode
    (``--lungs remove|only`` fills the same regions, from the dataset's lung masks).

    Args:
        run_dir: a folder written by ``cxrlab train``, an ensemble folder, or several run
            folders (an ensemble: the members' calibrated probabilities are averaged; a single
            run is scored on its own, uncalibrated probabilities, like its metrics.json).
        data: dataset folder (default: the one the run trained on), or data already prepared
            with :func:`~cxrlab.data.prepare_data` at the run's size and lungs mode (an
            external set scored for many runs is scanned and decoded once).
        split: ``test``/``val``/``train`` of the run's own saved split (checked against the
            data), or ``all`` for every valid image of ``data`` (an external test set).
        out: where to write the metrics JSON (optional).
        class_map: dataset class -> model class (``"-"``: not scored, only shown where its
            images went); classes are otherwise matched by name and known aliases
            (``COVID-19`` is ``COVID``). A dataset may hold only some of the model's classes.
        exclude_copies: on another dataset, leave out of the metrics every image that copies
            one of the run's training or validation images (found by content hash and
            perceptual signature, and reported in ``overlap``), and every image of a patient
            the run saw (:meth:`~cxrlab.runs.scoring.ScoringRun.seen_patients`).
        predictions: write the scored images' predictions here (CSV, see
            :func:`write_predictions`; labels are the model classes they map to).
        image_size: test at this input size instead of the run's (a convolutional network
            takes any size; a model trained at a lower resolution may score better tested
            at a higher one: Touvron et al. 2019, "Fixing the train-test resolution
            discrepancy"). Choose it on the validation split.

    Returns:
        :func:`~cxrlab.evaluation.classification_metrics` over the scored images, plus
        ``class_matching``, ``routing`` (where the images of each dataset class went, scored
        or not), ``external``, ``ece_calibrated`` (a single run with a temperature: the ECE
        of its calibrated probabilities) and, for another dataset, ``overlap``,
        ``excluded_copies``, ``excluded_patients`` (other images of patients the run saw),
        ``excluded_pretraining`` (images its backbone's self-supervised pretraining saw),
        ``copy_share`` (the share of its images that copy the run's
        training or validation images) and ``not_external`` (that share is above
        :data:`NOT_EXTERNAL_SHARE`).

    Raises:
        CheckpointError: the dataset has a class the model does not know and no mapping, or
            no image can be scored; ``image_size`` for a model of fixed input size.
    """
    from ..evaluation.other_data import match_classes, routing

    run = open_run(run_dir)
    preparation = None
    if image_size is not None and image_size != run.image_size:
        _check_any_size(run, image_size)
        preparation = run.preparation().replace(image_size=image_size)
    prepared = run.prepare(data, split, preparation=preparation, progress=progress)
    classes, ensemble = run.classes, run.ensemble
    matching = match_classes(prepared.classes, classes, class_map,
                             where=f"the model in {run.path}")  # fmt: skip
    rows = prepared.split.indices(split)
    records = [prepared.split.records[i] for i in rows]
    external = not run.is_own_data(prepared)
    seen = run.not_held_out(prepared, rows, progress=progress) if external else None
    excluded = seen.paths if seen is not None and exclude_copies else set()
    # every image is predicted (unscored classes too: where did they go?)
    probs, temperatures = _member_probabilities(list(run.members), prepared, rows, split,
                                                ensemble, device, batch_size,
                                                progress)  # fmt: skip
    scored = scored_positions(records, matching, excluded, prepared)
    y = np.array([classes.index(matching[records[k].label]) for k in scored])  # type: ignore[arg-type]
    sources = [prepared.split.source_of(rows[k]) for k in scored]
    metrics = classification_metrics(y, probs[scored], classes, sources)
    metrics.update(
        {
            "split": split,
            "image_size": prepared.images.size,
            "data_root": str(prepared.report.root),
            "data_hash": prepared.report.fingerprint(),
            "external": external,
            "lungs": prepared.lungs,
            "left_out_no_mask": len(prepared.left_out),
            "class_matching": matching,
            "classes_present": sorted({classes[i] for i in y}, key=classes.index),
            "n_unscored": sum(matching[r.label] is None for r in records),
            "routing": routing([r.label for r in records], probs.argmax(1), classes),
        }
    )
    if not ensemble and temperatures[0] != 1:
        calibrated = apply_temperature(probs[scored], temperatures[0])
        metrics["temperature"] = temperatures[0]
        metrics["ece_calibrated"] = expected_calibration_error(calibrated, y)
    if ensemble:
        metrics["members"] = [str(m) for m in run.members]
    if seen is not None:
        metrics["overlap"] = seen.overlap.to_dict()
        metrics["excluded_copies"] = len(seen.copies) if exclude_copies else 0
        metrics["excluded_patients"] = len(seen.patients) if exclude_copies else 0
        metrics["excluded_pretraining"] = len(seen.pretrained) if exclude_copies else 0
        metrics["copy_share"] = len(seen.copies) / max(1, len(records))
        metrics["not_external"] = metrics["copy_share"] > NOT_EXTERNAL_SHARE
    if predictions is not None:
        write_predictions(predictions, [records[k].path for k in scored], y, probs[scored],
                          classes)  # fmt: skip
    if out is not None:
        write_json(out, metrics)
    return metrics


def _check_any_size(run: Any, image_size: int) -> None:
    """Refuse a test size other than the training size for a model that takes one size
    (every model of an ensemble is tried)."""
    from ..models import create_model

    if image_size < 32:
        raise CheckpointError(f"--image-size must be at least 32 pixels, got {image_size}")
    for model in dict.fromkeys(card.model for card in run.member_cards):
        net = create_model(model, len(run.classes), "none", image_size=run.image_size)
        try:
            with torch.no_grad():
                net.eval()(torch.zeros(1, 1, image_size, image_size))  # grey, as models take
        except (AssertionError, RuntimeError, ValueError) as e:
            raise CheckpointError(
                f"{model} takes only the input size it was trained at ({run.image_size} px), "
                f"not {image_size} px: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
            ) from None


def _member_probabilities(members: list[Path], prepared: PreparedData, rows: list[int],
                          split: str, ensemble: bool, device: str, batch_size: int,
                          progress: bool) -> tuple[np.ndarray, list[float]]:  # fmt: skip
    """The probabilities of every image (an ensemble: its members' calibrated probabilities
    averaged), and each member's temperature."""
    dev = resolve_device(device)
    member_probs, temperatures = [], []
    for member in members:
        desc = f"Evaluating {split}" + (f" ({member.name})" if ensemble else "")
        p, mcard = run_probabilities(member, prepared.images, rows, dev, batch_size=batch_size,
                                     desc=desc, progress=progress)  # fmt: skip
        temperatures.append(mcard.temperature)
        member_probs.append(apply_temperature(p, temperatures[-1]) if ensemble else p)
    return np.mean(member_probs, axis=0), temperatures


def scored_positions(records: list[Any], matching: dict[str, str | None], excluded: set[str],
            prepared: PreparedData) -> list[int]:  # fmt: skip
    """Positions of the images that are scored: a model class, and not a copy.

    Raises:
        CheckpointError: none is.
    """
    scored = [k for k, r in enumerate(records)
              if matching[r.label] is not None and r.path not in excluded]  # fmt: skip
    if not scored:
        raise CheckpointError(
            f"No image of {prepared.report.root} can be scored: "
            + ("every class is unscored" if not any(matching.values()) else
               f"all {len(records)} images of the scored classes copy the run's training or "
               "validation images or show their patients" if excluded else
               "no image of a scored class")
        )  # fmt: skip
    return scored


#: An "external" set more than this share of whose images copy the run's training or
#: validation images is flagged ``not_external``: its numbers are partly a memory test.
NOT_EXTERNAL_SHARE = 0.2
