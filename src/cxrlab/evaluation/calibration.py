"""Temperature scaling (Guo et al., ICML 2017): calibrated probabilities without new errors.

One scalar ``T`` divides the logits; it is fitted by minimising the negative log-likelihood
on the validation split, so the test split never sees the fit. Dividing every logit by the
same positive number never changes which class is largest: accuracy, the confusion matrix and
every paired comparison stay as they were; only the confidence moves.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from .metrics import expected_calibration_error

__all__ = ["apply_temperature", "fit_temperature", "nll", "plot_reliability"]


def _logits(probs: np.ndarray) -> np.ndarray:
    """Log-probabilities: logits up to a per-row constant, which softmax ignores."""
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0))


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes."""
    p = np.clip(np.asarray(probs, dtype=np.float64)[np.arange(len(y)), y], 1e-12, 1.0)
    return float(-np.log(p).mean())


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities with their logits divided by ``temperature``."""
    return softmax(_logits(probs) / temperature, axis=1).astype(np.float32)


def fit_temperature(
    probs: np.ndarray, y: np.ndarray, *, prior: float | None = None, prior_scale: float = 0.7
) -> float:
    """The ``T`` in [0.05, 20] that minimises the NLL of ``probs`` (validation) at ``y``.

    With ``prior``: the maximum a posteriori ``T`` under a log-normal prior centred there
    (``log T ~ N(log prior, prior_scale^2)``; 0.7 is about a factor of two), for a handful of
    images, where the plain fit runs to the bound whenever they happen to be separated."""
    z, y = _logits(probs), np.asarray(y, dtype=int)
    centre = 0.0 if prior is None else float(np.log(prior))

    def loss(log_t: float) -> float:
        fit = float(-log_softmax(z / np.exp(log_t), axis=1)[np.arange(len(y)), y].mean())
        if prior is None:
            return fit
        return fit + (log_t - centre) ** 2 / (2 * prior_scale**2 * len(y))

    best = minimize_scalar(loss, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    t = float(np.exp(best.x))
    # never worse than no scaling (than the prior's own value, with one)
    return t if loss(np.log(t)) <= loss(centre) else float(np.exp(centre))


def plot_reliability(
    before: np.ndarray, after: np.ndarray, y: np.ndarray, out: str | os.PathLike[str],
    temperature: float, n_bins: int = 10,
) -> Path:  # fmt: skip
    """Reliability diagram: accuracy against confidence in bins, before and after scaling."""
    fig, ax = plt.subplots(figsize=(4.6, 4.2), dpi=120)
    edges = np.linspace(0, 1, n_bins + 1)
    for probs, name, marker in ((before, "before", "o-"), (after, f"T = {temperature:.2f}", "s-")):
        conf, correct = probs.max(1), probs.argmax(1) == y
        bins = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
        xs = [conf[bins == b].mean() for b in range(n_bins) if (bins == b).any()]
        ys = [correct[bins == b].mean() for b in range(n_bins) if (bins == b).any()]
        ece = expected_calibration_error(probs, y)
        ax.plot(xs, ys, marker, label=f"{name} (ECE {ece:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_xlabel("confidence (top class)")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability on the test split", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return Path(out)
