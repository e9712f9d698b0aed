"""Acquisition probes: can the class be told from what should carry no diagnosis?

Each probe turns an image into a few features that describe how it was acquired or stored,
not the lungs, and a cross-validated logistic regression predicts the class from them:

* ``thumbnail``: the image at 16x16 pixels (framing, exposure, patient size and position).
* ``histogram``: the 32-bin intensity histogram (exposure, processing, windowing).
* ``border``: the outer 8 % of the image on each side, averaged across its width into 16
  values per side (collimation edges, burned-in text, rulers, markers).
* ``file``: the original file's size in bytes (and per pixel), width, height, format and
  pixel mode/bit depth.

High probe accuracy means the classes differ in acquisition (one hospital per class, one
age group per class, one export pipeline per class), which a deep model can learn instead of
the disease. It is not proof that a model did; a low score is no proof that it did not (a
thumbnail still shows large opacities, and the compressed file size depends on the content).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..evaluation.acquisition import PROBES, probe_features
from ..evaluation.intervals import bootstrap_interval

__all__ = ["PROBES", "acquisition_probes", "linear_probe", "probe_features", "source_probe"]


def acquisition_probes(
    images: np.ndarray,
    labels: Sequence[str],
    root: Path | None = None,
    paths: Sequence[str] = (),
    *,
    probes: Sequence[str] = PROBES,
    folds: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Cross-validated probe scores (balanced accuracy, chance ``1/K``) with 95 % intervals.

    Args:
        images: ``(N, H, W)`` uint8, the images as the model saw them.
        labels: each image's class.
        root: the dataset folder (for the ``file`` probe).
        paths: each image's file (for the ``file`` probe).

    Returns:
        ``{"n", "classes", "chance", "folds", "probes": {name: {balanced_accuracy, ci,
        accuracy, per_class_recall}}}``, or ``{"skipped": reason}`` when a class has too few
        images to cross-validate.
    """
    classes = sorted(set(labels))
    y = np.array([classes.index(c) for c in labels])
    counts = np.bincount(y, minlength=len(classes))
    if len(classes) < 2:
        return {"skipped": "the probes need images of at least two classes"}
    k = int(min(folds, counts.min()))
    if k < 2:
        rare = classes[int(counts.argmin())]
        return {"skipped": f"class {rare!r} has {counts.min()} image(s); cross-validation needs 2"}
    out: dict[str, Any] = {
        "n": len(y),
        "classes": classes,
        "chance": 1 / len(classes),
        "folds": k,
        "probes": {},
    }
    for probe in probes:
        x = probe_features(probe, images, root, paths)
        out["probes"][probe] = linear_probe(x, y, classes, folds=k, seed=seed)
        out["probes"][probe].pop("predictions")
    return out


def linear_probe(
    x: np.ndarray, y: np.ndarray, names: Sequence[str], *, folds: int, seed: int = 0
) -> dict[str, Any]:
    """How well a cross-validated (stratified ``folds``-fold) standardised logistic
    regression tells ``y`` from ``x``: balanced accuracy with a bootstrap 95 % interval,
    accuracy, recall per name, and the out-of-fold ``predictions``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=1.0))
    pred = cross_val_predict(clf, x, y, cv=cv)

    def balanced(idx: np.ndarray) -> float:
        yy, pp = y[idx], pred[idx]
        recalls = [(pp[yy == c] == c).mean() for c in range(len(names)) if (yy == c).any()]
        return float(np.mean(recalls))

    return {
        "balanced_accuracy": balanced(np.arange(len(y))),
        "ci": bootstrap_interval(balanced, len(y), seed=seed),
        "accuracy": float((pred == y).mean()),
        "per_class_recall": {c: float((pred[y == i] == i).mean()) for i, c in enumerate(names)},
        "features": int(x.shape[1]),
        "predictions": pred,
    }


def source_probe(
    features: np.ndarray,
    sources: Sequence[str],
    labels: Sequence[str],
    *,
    folds: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """How much of its images' source a model carries: a linear probe predicts each image's
    source from the model's penultimate ``features`` (lower is better).

    A source that holds more of one class than another can be told from the class alone, so
    the probe is set beside the best guess from the class (each class's most common source):
    what it finds above that is source the model carries beyond its classes.

    Returns:
        ``{"n", "sources", "chance", "from_class", "balanced_accuracy", "ci", ...}`` (see
        :func:`linear_probe`), or ``{"skipped": reason}`` with fewer than two sources or a
        source too small to cross-validate.
    """
    names = sorted(set(sources))
    if len(names) < 2:
        return {"skipped": "the source probe needs images of at least two sources"}
    y = np.array([names.index(s) for s in sources])
    counts = np.bincount(y, minlength=len(names))
    k = int(min(folds, counts.min()))
    if k < 2:
        rare = names[int(counts.argmin())]
        return {"skipped": f"source {rare!r} has {counts.min()} image(s); cross-validation needs 2"}
    labels = np.asarray(labels)
    guess = np.empty_like(y)
    for c in set(labels.tolist()):
        rows = labels == c
        guess[rows] = np.bincount(y[rows], minlength=len(names)).argmax()
    from_class = float(np.mean([(guess[y == i] == i).mean() for i in range(len(names))]))
    probe = linear_probe(np.asarray(features, dtype=np.float64), y, names, folds=k, seed=seed)
    probe.pop("predictions")
    return {"n": len(y), "sources": names, "chance": 1 / len(names), "folds": k,
            "from_class": from_class, **probe}  # fmt: skip
