"""Figures of one run: the loss curves and the confusion matrix (matplotlib, Agg)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np

__all__ = ["plot_confusion_matrix", "plot_loss"]


def plot_loss(history: Sequence[dict], out: str | os.PathLike[str], title: str = "") -> Path:
    """Train vs validation loss over epochs (the original study's loss figure)."""
    epochs = [int(h["epoch"]) for h in history]
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    ax.plot(epochs, [float(h["train_loss"]) for h in history], "o-", label="train")
    ax.plot(epochs, [float(h["val_loss"]) for h in history], "s-", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(title or "Loss over epochs")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return Path(out)


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]],
    classes: Sequence[str],
    out: str | os.PathLike[str],
    title: str = "",
) -> Path:
    """Counts with row-normalised shading; rows are true classes, columns predictions."""
    from sklearn.metrics import ConfusionMatrixDisplay

    cm = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=120)
    ConfusionMatrixDisplay(cm, display_labels=list(classes)).plot(
        ax=ax, cmap="Blues", colorbar=False, values_format="d"
    )
    acc = np.trace(cm) / max(1, cm.sum())
    ax.set_title(title or f"Confusion matrix (accuracy {acc:.3f})")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return Path(out)
