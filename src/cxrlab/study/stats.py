"""Statistics for comparing training types: intervals, paired tests, multiple comparisons.

* :func:`wilson_interval` - a 95 % interval for one run's test accuracy (binomial).
* :func:`t_interval` - a 95 % interval for a mean over seeds (Student t).
* :func:`mcnemar_exact` - McNemar's exact test on the discordant pairs of two classifiers
  evaluated on the same test images.
* :func:`paired_bootstrap` - difference in (seed-averaged) accuracy of two training types on
  the same test images, with a bootstrap interval and two-sided p-value.
* :func:`holm` - Holm-Bonferroni adjustment of a family of p-values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

__all__ = ["holm", "mcnemar_exact", "paired_bootstrap", "t_interval", "wilson_interval"]


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``correct / n``."""
    if n == 0:
        return (float("nan"), float("nan"))
    z = stats.norm.ppf(0.5 + confidence / 2)
    p = correct / n
    denom = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return (float(centre - half), float(centre + half))


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval for the mean of ``values`` (NaNs for fewer than two values)."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return (float("nan"), float("nan"))
    half = stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return (float(x.mean() - half), float(x.mean() + half))


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[int, int, float]:
    """McNemar's exact test: are A and B equally often right where they disagree?

    Args:
        correct_a, correct_b: booleans per test image, in the same image order.

    Returns:
        ``(b, c, p)``: images only A got right, only B got right, and the two-sided exact
        binomial p-value (1.0 when they never disagree).
    """
    a = np.asarray(correct_a, dtype=bool)
    b_ = np.asarray(correct_b, dtype=bool)
    if a.shape != b_.shape:
        raise ValueError("McNemar needs predictions on the same images")
    only_a, only_b = int((a & ~b_).sum()), int((~a & b_).sum())
    if only_a + only_b == 0:
        return only_a, only_b, 1.0
    p = stats.binomtest(only_a, only_a + only_b, 0.5).pvalue
    return only_a, only_b, float(min(1.0, p))


def paired_bootstrap(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, tuple[float, float], float]:
    """Bootstrap over test images of the accuracy difference A - B.

    Args:
        correct_a, correct_b: ``(runs, images)`` or ``(images,)`` booleans; several runs
            (seeds) of a training type are averaged per image, so the test asks whether
            the training types differ, not single runs.

    Returns:
        ``(difference, (low, high), p)``: the observed difference in mean accuracy, its
        percentile interval, and a two-sided p-value (the share of resampled differences on
        the other side of zero, doubled; at least ``1 / (n_resamples + 1)``).
    """
    a = np.atleast_2d(np.asarray(correct_a, dtype=float)).mean(axis=0)  # (images,)
    b = np.atleast_2d(np.asarray(correct_b, dtype=float)).mean(axis=0)
    if a.shape != b.shape:
        raise ValueError("The paired bootstrap needs the same test images for A and B")
    d = a - b
    observed = float(d.mean())
    if np.all(d == 0):
        return 0.0, (0.0, 0.0), 1.0
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(n_resamples, len(d)))
    boot = d[idx].mean(axis=1)
    alpha = 1 - confidence
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    tail = min((boot <= 0).mean(), (boot >= 0).mean())
    p = min(1.0, max(2 * tail, 1 / (n_resamples + 1)))
    return observed, (float(low), float(high)), float(p)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given)."""
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    order = np.argsort(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()
