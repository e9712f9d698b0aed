"""Per-image out-of-distribution scores: how far an image lies from what a run trained on.

Each score is higher for an image further from the training data; none needs a label of the
new image. They are fitted on the run's training images and their thresholds on its
validation images (:mod:`cxrlab.shift.reference`), never on the data they judge.

* ``mahalanobis``: the smallest Mahalanobis distance of an image's penultimate features to a
  class mean, with one covariance shared by the classes (Lee et al. 2018), shrunk by
  Ledoit-Wolf because a network's features have more dimensions than a study has images.
* ``knn``: the cosine distance to the k-th nearest training image's features, on features
  scaled to unit length (Sun et al. 2022).
* ``signature``: the Mahalanobis distance of an image's acquisition signature (the audit's
  16x16 thumbnail, 32-bin histogram and border strips, :mod:`cxrlab.evaluation.acquisition`) to the
  training images' (one class, Ledoit-Wolf): how the image was taken and stored, which a
  network's features may not show (the next hospital can look typical to a model and still
  be misread).
* ``confidence``: one minus the largest class probability (the maximum-softmax baseline,
  Hendrycks and Gimpel 2017).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

__all__ = [
    "SIGNALS",
    "KnnDistance",
    "Mahalanobis",
    "detection_auroc",
    "keep_threshold",
    "max_softmax_score",
]

#: The per-image signals, in the order reports list them.
SIGNALS = ("mahalanobis", "knn", "signature", "confidence")


@dataclass(frozen=True)
class Mahalanobis:
    """Class means and one shared precision matrix; :meth:`score` is the smallest squared
    distance to a class mean (one class: the distance to the mean)."""

    means: np.ndarray  # (K, D)
    precision: np.ndarray  # (D, D)

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray | None = None) -> Mahalanobis:
        """Fit on ``(N, D)`` features and their ``(N,)`` class indices (``None``: one class).

        Raises:
            ValueError: fewer than two images, or a class without one.
        """
        x = np.asarray(x, dtype=np.float64)
        y = np.zeros(len(x), dtype=np.int64) if y is None else np.asarray(y)
        if len(x) < 2:
            raise ValueError("A Mahalanobis score needs at least two reference images")
        classes = np.unique(y)
        means = np.stack([x[y == c].mean(0) for c in classes])
        centred = x - means[np.searchsorted(classes, y)]
        lw = LedoitWolf(assume_centered=True).fit(centred)
        return cls(means, lw.precision_)

    def score(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        out = np.full(len(x), np.inf)
        for m in self.means:
            d = x - m
            out = np.minimum(out, np.einsum("nd,de,ne->n", d, self.precision, d))
        return out


@dataclass(frozen=True)
class KnnDistance:
    """The cosine distance to the ``k``-th nearest of a bank of reference features."""

    bank: np.ndarray  # (M, D), unit rows
    k: int = 10

    @classmethod
    def fit(cls, x: np.ndarray, k: int = 10) -> KnnDistance:
        if len(x) < 1:
            raise ValueError("A k-NN score needs reference images")
        return cls(_unit(x), max(1, min(k, len(x))))

    def score(self, x: np.ndarray, chunk: int = 1024) -> np.ndarray:
        q = _unit(x)
        out = np.empty(len(q))
        for start in range(0, len(q), chunk):
            sim = q[start : start + chunk] @ self.bank.T  # (c, M)
            kth = np.partition(-sim, self.k - 1, axis=1)[:, self.k - 1]
            out[start : start + chunk] = 1 + kth  # 1 - (k-th largest similarity)
        return out


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def max_softmax_score(probs: np.ndarray) -> np.ndarray:
    """One minus each row's largest probability."""
    return 1.0 - np.asarray(probs, dtype=np.float64).max(axis=1)


def keep_threshold(reference: np.ndarray, keep: float = 0.95) -> float:
    """The score below which a share ``keep`` of the reference images fall: an image above
    it is flagged (so about ``1 - keep`` of in-distribution images are)."""
    if not 0 < keep < 1:
        raise ValueError(f"keep rate must be in (0, 1), got {keep}")
    return float(np.quantile(np.asarray(reference, dtype=np.float64), keep, method="higher"))


def detection_auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """How well a score tells ``outside`` images (positives) from ``inside`` ones: 0.5 is
    chance, 1 perfect."""
    y = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
    return float(roc_auc_score(y, np.r_[inside, outside]))
