"""Running a model over batches, and ``cxrlab evaluate`` for a finished run."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import prepare_data
from ..errors import CheckpointError
from ..evaluation import classification_metrics
from ..evaluation.calibration import apply_temperature
from ..utils import write_json
from .batches import ImageBatches, tta_views
from .rundir import load_run_model
from .runtime import autocast, resolve_device, run_precision

__all__ = ["evaluate_run", "predict_batches", "run_tta", "write_predictions"]


@torch.no_grad()
def predict_batches(
    model: torch.nn.Module,
    batches: ImageBatches,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    *,
    desc: str = "",
    progress: bool = False,
    tta: bool = False,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Class probabilities for every image of ``batches`` (in subset order).

    With ``tta`` the probabilities of :func:`~cxrlab.engine.batches.tta_views` are averaged
    (images only, not cached features).

    Returns:
        ``(probs, y_true, mean_loss)``: ``probs`` is ``(N, K)`` float32, ``y_true`` ``(N,)``,
        and ``mean_loss`` the mean cross-entropy.
    """
    was_training = model.training
    model.eval()
    probs, ys, loss_sum = [], [], 0.0
    for x, y in tqdm(
        batches.batches(),
        total=len(batches),
        desc=desc,
        leave=False,
        disable=not progress or None,
        unit="batch",
    ):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if tta:  # the average probability of the views
            with autocast(device, amp_dtype):
                views = [model(v).float() for v in tta_views(x.float())]
            p = torch.stack([v.softmax(dim=1) for v in views]).mean(0)  # (B, K)
            loss_sum += F.nll_loss(p.clamp_min(1e-12).log(), y, reduction="sum").item()
        else:
            with autocast(device, amp_dtype):
                logits = model(x)
            logits = logits.float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            p = logits.softmax(dim=1)
        probs.append(p.cpu())
        ys.append(y.cpu())
    model.train(was_training)
    n = max(1, len(batches.indices))
    return torch.cat(probs).numpy(), torch.cat(ys).numpy(), loss_sum / n


def run_tta(card: dict[str, Any]) -> bool:
    """Whether a run's model is evaluated with test-time augmentation (its ``--tta``)."""
    return bool(card.get("training", {}).get("config", {}).get("tta", False))


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


def evaluate_run(
    run_dir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    data: str | os.PathLike[str] | None = None,
    *,
    split: str = "test",
    out: str | os.PathLike[str] | None = None,
    batch_size: int = 64,
    device: str = "auto",
    class_map: dict[str, str] | None = None,
    exclude_copies: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Metrics of a finished run's model on a dataset.

    Args:
        run_dir: a folder written by ``cxrlab train``, an ensemble folder, or several run
            folders (an ensemble: the members' calibrated probabilities are averaged; a single
            run is scored on its own, uncalibrated probabilities, like its metrics.json).
        data: dataset folder (default: the one the run trained on).
        split: ``test``/``val``/``train`` of the run's own saved split (checked against the
            data), or ``all`` for every valid image of ``data`` (an external test set).
        out: where to write the metrics JSON (optional).
        class_map: dataset class -> model class (``"-"``: not scored, only shown where its
            images went); classes are otherwise matched by name and known aliases
            (``COVID-19`` is ``COVID``). A dataset may hold only some of the model's classes.
        exclude_copies: on another dataset, leave out of the metrics every image that copies
            one of the run's training or validation images (found by content hash and
            perceptual signature, and reported in ``overlap``).

    Returns:
        :func:`~cxrlab.evaluation.classification_metrics` over the scored images, plus
        ``class_matching``, ``routing`` (where the images of each dataset class went, scored
        or not), ``external`` and, for another dataset, ``overlap`` and ``excluded_copies``.

    Raises:
        CheckpointError: the dataset has a class the model does not know and no mapping.
    """
    from ..evaluation.external import find_overlap, match_classes, routing
    from .ensemble import ensemble_card, expand_members, is_ensemble

    sources = [run_dir] if isinstance(run_dir, (str, os.PathLike)) else list(run_dir)
    run_dir = Path(sources[0])  # a run folder, or an ensemble folder holding the split
    members = expand_members(sources)
    card = ensemble_card(sources)
    ensemble = len(members) > 1 or is_ensemble(run_dir)
    root = data if data is not None else card["data"]["root"]
    size = int(card["preprocessing"]["image_size"])
    if split == "all":
        prepared = prepare_data(root, holdout_all=True, image_size=size, progress=progress)
    else:
        manifest = run_dir / "split.csv"
        if not manifest.is_file():
            raise CheckpointError(
                f"{run_dir} has no split.csv; use --split all to evaluate on every image of --data"
            )
        # the run's own split, checked image by image against the data
        prepared = prepare_data(root, split_file=manifest, image_size=size, progress=progress)
    classes = list(card["classes"])
    matching = match_classes(prepared.classes, classes, class_map,
                             where=f"the model in {run_dir}")  # fmt: skip
    rows = prepared.split.indices(split)
    records = [prepared.split.records[i] for i in rows]
    external = prepared.report.fingerprint() != card["data"]["data_hash"]
    overlap = None
    if external:
        overlap = find_overlap(run_dir, card, records, prepared.images.array[rows],
                               progress=progress)  # fmt: skip
    excluded = overlap.paths(("train", "val")) if overlap is not None and exclude_copies else set()
    # every image is predicted (unscored classes too: where did they go?)
    labels = np.zeros(len(prepared.split.records), dtype=np.int64)
    batches = ImageBatches(prepared.images.array, rows, labels, batch_size)
    dev = resolve_device(device)
    member_probs = []
    for member in members:
        model, mcard = load_run_model(member)
        model.to(dev)
        desc = f"Evaluating {split}" + (f" ({member.name})" if ensemble else "")
        p, _, _ = predict_batches(model, batches, dev, run_precision(mcard, dev), desc=desc,
                                  progress=progress, tta=run_tta(mcard))  # fmt: skip
        if ensemble:
            p = apply_temperature(p, float(mcard.get("calibration", {}).get("temperature", 1)))
        member_probs.append(p)
    probs = np.mean(member_probs, axis=0)
    scored = [k for k, r in enumerate(records)
              if matching[r.label] is not None and r.path not in excluded]  # fmt: skip
    if not scored:
        raise CheckpointError(
            f"No image of {prepared.report.root} can be scored: every class is unscored or "
            "every image copies a training image"
        )
    y = np.array([classes.index(matching[records[k].label]) for k in scored])  # type: ignore[arg-type]
    metrics = classification_metrics(y, probs[scored], classes)
    metrics.update(
        {
            "split": split,
            "data_root": str(prepared.report.root),
            "data_hash": prepared.report.fingerprint(),
            "external": external,
            "class_matching": matching,
            "classes_present": sorted({classes[i] for i in y}, key=classes.index),
            "n_unscored": sum(matching[r.label] is None for r in records),
            "routing": routing([r.label for r in records], probs.argmax(1), classes),
        }
    )
    if ensemble:
        metrics["members"] = [str(m) for m in members]
    if overlap is not None:
        metrics["overlap"] = overlap.to_dict()
        metrics["excluded_copies"] = len(excluded)
    if out is not None:
        write_json(out, metrics)
    return metrics
