"""Batch-level shift: is a set of new images drawn like the run's validation images, how
does its class mix differ, and how accurate is the model there, all without labels.

Two-sample tests (Rabanser et al. 2019, "Failing loudly"), each ``(reference, new) ->
(statistic, p_value)``:

* ``ks``: black-box shift detection on the softmax outputs (BBSDs): a Kolmogorov-Smirnov
  test per class probability, Bonferroni-corrected; "Failing loudly" found it the most
  powerful of the tests it compared.
* ``mmd``: the maximum mean discrepancy of the penultimate features (reduced to 32
  principal components of the reference), RBF kernel at the median distance, p-value by
  permutation.
* ``c2st``: a classifier two-sample test: a logistic regression tells new images from
  reference ones on the features, cross-validated; its out-of-fold AUROC is the statistic
  and the one-sided Mann-Whitney test of its scores the p-value (Lopez-Paz and Oquab 2017).

Label shift and accuracy without labels:

* :func:`class_mix`: black-box shift estimation (Lipton et al. 2018): the class priors of
  the new set from the model's predicted class mix and its confusion matrix on validation.
* :func:`estimated_accuracy`: average thresholded confidence (ATC, Garg et al. 2022): the
  threshold on the negative entropy that as many validation images pass as the model gets
  right, then the share of new images that pass it; interval by bootstrap over both sets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats

__all__ = [
    "TESTS",
    "atc_threshold",
    "c2st_test",
    "class_mix",
    "detection_power",
    "estimated_accuracy",
    "ks_test",
    "mmd_test",
    "negative_entropy",
    "two_sample_test",
]

#: The two-sample tests by name (see the module docstring).
TESTS = ("ks", "mmd", "c2st")


def ks_test(ref_probs: np.ndarray, new_probs: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """BBSDs: ``(largest KS statistic, Bonferroni-corrected smallest p-value)``."""
    k = ref_probs.shape[1]
    results = [stats.ks_2samp(ref_probs[:, j], new_probs[:, j]) for j in range(k)]
    return (float(max(r.statistic for r in results)),
            float(min(1.0, k * min(r.pvalue for r in results))))  # fmt: skip


def _pca(ref: np.ndarray, new: np.ndarray, dims: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Both sets projected on the reference's leading principal components."""
    mean = ref.mean(0)
    _, _, vt = np.linalg.svd(ref - mean, full_matrices=False)
    basis = vt[: min(dims, vt.shape[0])].T
    return (ref - mean) @ basis, (new - mean) @ basis


def _mmd2(k: np.ndarray, n: int) -> float:
    """The unbiased MMD² of a joint kernel matrix whose first ``n`` rows are one sample."""
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    m = len(k) - n
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1))
                 + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())  # fmt: skip


def mmd_test(ref: np.ndarray, new: np.ndarray, seed: int = 0,
             permutations: int = 200) -> tuple[float, float]:  # fmt: skip
    """``(MMD², permutation p-value)`` of two feature sets (RBF kernel, median bandwidth)."""
    a, b = _pca(np.asarray(ref, np.float64), np.asarray(new, np.float64))
    z = np.concatenate([a, b])
    sq = (z * z).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0)
    bandwidth = np.median(d2[np.triu_indices(len(z), 1)]) or 1.0
    k = np.exp(-d2 / bandwidth)
    n = len(a)
    observed = _mmd2(k, n)
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(permutations):
        p = rng.permutation(len(z))
        hits += _mmd2(k[np.ix_(p, p)], n) >= observed
    return observed, (hits + 1) / (permutations + 1)


def c2st_test(ref: np.ndarray, new: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """``(out-of-fold AUROC, one-sided p-value)`` of a domain classifier on the features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    a, b = _pca(np.asarray(ref, np.float64), np.asarray(new, np.float64))
    x = np.concatenate([a, b])
    y = np.r_[np.zeros(len(a)), np.ones(len(b))]
    folds = int(min(5, len(a), len(b)))
    if folds < 2:
        return float("nan"), 1.0
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    scores = cross_val_predict(clf, x, y, cv=cv, method="predict_proba")[:, 1]
    auroc = float(roc_auc_score(y, scores))
    p = stats.mannwhitneyu(scores[y == 1], scores[y == 0], alternative="greater").pvalue
    return auroc, float(p)


def two_sample_test(name: str) -> Callable[..., tuple[float, float]]:
    """The test called ``name`` (``ks`` takes probabilities, the others features).

    Raises:
        ValueError: an unknown name.
    """
    tests = {"ks": ks_test, "mmd": mmd_test, "c2st": c2st_test}
    if name not in tests:
        raise ValueError(f"Unknown two-sample test {name!r}; choose one of {', '.join(TESTS)}")
    return tests[name]


def detection_power(
    test: Callable[..., tuple[float, float]],
    reference: np.ndarray,
    new: np.ndarray,
    sizes: Sequence[int] = (10, 25, 50, 100, 200),
    *,
    repeats: int = 30,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """How often ``test`` flags a random batch of ``n`` new images against the whole
    reference, for each ``n`` in ``sizes`` up to the set's size (``repeats`` batches each).

    Returns:
        ``{"power": {n: share flagged}, "min_batch": the smallest n flagged at least 80 % of
        the time (None if none is)}``.
    """
    rng = np.random.default_rng(seed)
    power: dict[int, float] = {}
    for n in sizes:
        if n > len(new):
            break
        hits = sum(
            test(reference, new[rng.choice(len(new), n, replace=False)], seed=int(r))[1] < alpha
            for r in range(repeats)
        )
        power[int(n)] = hits / repeats
    min_batch = next((n for n, p in power.items() if p >= 0.8), None)
    return {"power": power, "min_batch": min_batch, "repeats": repeats, "alpha": alpha}


def class_mix(ref_probs: np.ndarray, ref_labels: np.ndarray, new_probs: np.ndarray) -> np.ndarray:
    """The new set's class priors by black-box shift estimation (clipped at 0, summing to 1):
    ``C w = mu`` with ``C[i, j] = P(predicted i, true j)`` on the reference and ``mu`` the
    new set's predicted class mix; the priors are ``w * p(y)``."""
    k = ref_probs.shape[1]
    pred = ref_probs.argmax(1)
    c = np.zeros((k, k))
    np.add.at(c, (pred, ref_labels), 1)
    c /= len(ref_labels)
    mu = np.bincount(new_probs.argmax(1), minlength=k) / len(new_probs)
    prior = np.bincount(ref_labels, minlength=k) / len(ref_labels)
    w, *_ = np.linalg.lstsq(c, mu, rcond=None)
    q = np.clip(w, 0, None) * prior
    return q / q.sum() if q.sum() > 0 else prior


def negative_entropy(probs: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probs, np.float64), 1e-12, 1)
    return (p * np.log(p)).sum(1)


def atc_threshold(ref_probs: np.ndarray, ref_labels: np.ndarray) -> float:
    """The negative-entropy threshold that as many reference images pass as are right."""
    score = negative_entropy(ref_probs)
    accuracy = float((ref_probs.argmax(1) == ref_labels).mean())
    return float(np.quantile(score, 1 - accuracy))


def estimated_accuracy(ref_probs: np.ndarray, ref_labels: np.ndarray, new_probs: np.ndarray,
                       *, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """ATC's estimate of the accuracy on ``new_probs`` with a 95 % bootstrap interval
    (reference and new images resampled together)."""
    t = atc_threshold(ref_probs, ref_labels)
    estimate = float((negative_entropy(new_probs) > t).mean())
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        r = rng.integers(0, len(ref_labels), len(ref_labels))
        n = rng.integers(0, len(new_probs), len(new_probs))
        tb = atc_threshold(ref_probs[r], ref_labels[r])
        draws.append(float((negative_entropy(new_probs[n]) > tb).mean()))
    low, high = np.quantile(draws, [0.025, 0.975])
    return {"estimate": estimate, "ci": [float(low), float(high)], "threshold": t,
            "method": "ATC (negative entropy), Garg et al. 2022"}  # fmt: skip
