"""Running a model over batches, and ``cxrlab evaluate`` for a finished run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import prepare_data
from ..errors import CheckpointError
from ..evaluation import classification_metrics
from ..utils import write_json
from .batches import ImageBatches
from .rundir import load_run_model
from .runtime import autocast, resolve_device, resolve_precision

__all__ = ["evaluate_run", "predict_batches", "write_predictions"]


@torch.no_grad()
def predict_batches(
    model: torch.nn.Module,
    batches: ImageBatches,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    *,
    desc: str = "",
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Class probabilities for every image of ``batches`` (in subset order).

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
        with autocast(device, amp_dtype):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        probs.append(logits.softmax(dim=1).cpu())
        ys.append(y.cpu())
    model.train(was_training)
    n = max(1, len(batches.indices))
    return torch.cat(probs).numpy(), torch.cat(ys).numpy(), loss_sum / n


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
    run_dir: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    *,
    split: str = "test",
    out: str | os.PathLike[str] | None = None,
    batch_size: int = 64,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Metrics of a finished run's model on a dataset.

    Args:
        run_dir: a folder written by ``cxrlab train``.
        data: dataset folder (default: the one the run trained on).
        split: ``test``/``val``/``train`` of the run's own saved split (checked against the
            data), or ``all`` for every valid image of ``data`` (an external test set).
        out: where to write the metrics JSON (optional).

    Raises:
        CheckpointError: the dataset has classes the model does not know.
    """
    run_dir = Path(run_dir)
    model, card = load_run_model(run_dir)
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
    unknown = [c for c in prepared.classes if c not in classes]
    if unknown:
        raise CheckpointError(
            f"The dataset has classes {unknown} that the model in {run_dir} "
            f"was not trained on (it knows {classes})"
        )
    # dataset label index -> model output index, by class name
    remap = np.array([classes.index(c) for c in prepared.classes])
    labels = remap[np.asarray(prepared.split.labels(), dtype=np.int64)]
    batches = ImageBatches(prepared.images.array, prepared.split.indices(split), labels, batch_size)
    dev = resolve_device(device)
    model.to(dev)
    probs, y, _ = predict_batches(
        model,
        batches,
        dev,
        resolve_precision("auto", dev),
        desc=f"Evaluating {split}",
        progress=progress,
    )
    metrics = classification_metrics(y, probs, classes)
    metrics["split"] = split
    metrics["data_root"] = str(prepared.report.root)
    metrics["data_hash"] = prepared.report.fingerprint()
    if out is not None:
        write_json(out, metrics)
    return metrics
