"""Classification metrics for a test set, computed with scikit-learn."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

__all__ = ["classification_metrics", "expected_calibration_error", "per_source_metrics"]


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> float:
    """Top-label expected calibration error (Guo et al., 2017) with equal-width bins.

    The weighted mean over bins of ``|accuracy - mean confidence|``.
    """
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(ece)


def _class_scores(precision: float, recall: float, f1: float, support: int, predicted: int,
                  auroc: float | None) -> dict[str, Any]:  # fmt: skip
    """One class's scores; a score with nothing to count is ``None`` with the reason beside
    it (``why_null``), never a 0 that reads like a failure."""
    out: dict[str, Any] = {"precision": float(precision), "recall": float(recall),
                           "f1": float(f1), "support": support, "auroc": auroc}  # fmt: skip
    why: dict[str, str] = {}
    if support == 0:
        for key in ("recall", "f1", "auroc"):
            out[key] = None
            why[key] = "no image of this class was scored"
    if predicted == 0:
        out["precision"] = None
        why["precision"] = "no image was predicted as this class"
    elif support and auroc is None:
        why["auroc"] = "needs images of at least two classes"
    if why:
        out["why_null"] = why
    return out


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    sources: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro F1, per-class scores, AUROC, ECE, confusion matrix.

    Args:
        y_true: true class indices, shape ``(N,)``.
        probs: predicted class probabilities, shape ``(N, K)``.
        classes: the K class names, in index order.
        sources: each image's source; with two or more, ``per_source`` holds
            :func:`per_source_metrics`.

    Returns:
        A JSON-ready dict. ``confusion_matrix`` has true classes as rows and predicted
        classes as columns, both in ``classes`` order. ``auroc`` is the macro mean of the
        one-vs-rest AUROCs of the classes present in ``y_true`` (``None`` if fewer than two
        are present); ``per_class[c]["auroc"]`` is ``None`` for an absent class.
    """
    y = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(classes)
    if probs.ndim != 2 or probs.shape != (len(y), k):
        raise ValueError(f"probs must have shape ({len(y)}, {k}), got {probs.shape}")
    labels = list(range(k))
    pred = probs.argmax(axis=1)
    prec, rec, f1, support = precision_recall_fscore_support(
        y, pred, labels=labels, zero_division=0
    )
    present = [c for c in labels if (y == c).any()]
    aurocs: dict[int, float | None] = dict.fromkeys(labels)
    if len(present) >= 2:
        for c in present:
            aurocs[c] = float(roc_auc_score(y == c, probs[:, c]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about classes absent from y_true
        balanced = float(balanced_accuracy_score(y, pred))
    per_class = {name: _class_scores(prec[i], rec[i], f1[i], int(support[i]),
                                     int((pred == i).sum()), aurocs[i])
                 for i, name in enumerate(classes)}  # fmt: skip
    valid_auroc = [a for a in aurocs.values() if a is not None]
    eps = 1e-7
    clipped = np.clip(probs, eps, 1.0)
    out = {
        "n": len(y),
        "classes": list(classes),
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": balanced,
        "macro_f1": float(
            f1_score(y, pred, labels=present or labels, average="macro", zero_division=0)
        ),
        "auroc": float(np.mean(valid_auroc)) if valid_auroc else None,
        "ece": expected_calibration_error(probs, y),
        "nll": float(log_loss(y, clipped / clipped.sum(1, keepdims=True), labels=labels)),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),
    }
    by_source = per_source_metrics(y, probs, sources, classes) if sources is not None else None
    if by_source is not None:
        out["per_source"] = by_source
    return out


def per_source_metrics(
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    sources: Sequence[str],
    classes: Sequence[str],
) -> dict[str, Any] | None:
    """Scores of each source's images, and the worst source; ``None`` with one source.

    Returns:
        ``{"sources": {name: {n, accuracy, balanced_accuracy, macro_f1, classes_present}},
        "worst": name}``: balanced accuracy and macro F1 over the classes a source has; the
        worst source is the one with the lowest balanced accuracy (ties: fewer images).
    """
    y = np.asarray(y_true, dtype=int)
    pred = np.asarray(probs).argmax(axis=1)
    names = sorted(set(sources))
    if len(names) < 2:
        return None
    src = np.asarray(sources)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        rows = src == name
        yy, pp = y[rows], pred[rows]
        present = sorted(set(yy.tolist()))
        recalls = [float((pp[yy == c] == c).mean()) for c in present]
        out[name] = {
            "n": int(rows.sum()),
            "accuracy": float((yy == pp).mean()),
            "balanced_accuracy": float(np.mean(recalls)),
            "macro_f1": float(f1_score(yy, pp, labels=present, average="macro", zero_division=0)),
            "classes_present": [classes[c] for c in present],
        }
    worst = min(names, key=lambda n: (out[n]["balanced_accuracy"], out[n]["n"]))
    return {"sources": out, "worst": worst}
