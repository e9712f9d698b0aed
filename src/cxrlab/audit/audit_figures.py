"""The audit's figures: scores without the lungs, where Grad-CAM looks, probe scores."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ..data import apply_lung_mask
from .checks import LUNG_VARIANTS

__all__ = ["plot_cam_outside", "plot_cam_shares", "plot_lung_examples", "plot_lungs", "plot_probes"]


def _save(fig: plt.Figure, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_lungs(result: dict[str, Any], out: Path) -> Path:
    """Accuracy with the lungs, without them, and with only them; chance as a line."""
    names = ["original", *result["variants"]]
    scores = [result["original"], *result["variants"].values()]
    acc = np.array([s["accuracy"] for s in scores])
    low = np.maximum(0, acc - np.array([s["accuracy_ci"][0] for s in scores]))
    high = np.maximum(0, np.array([s["accuracy_ci"][1] for s in scores]) - acc)
    fig, ax = plt.subplots(figsize=(6.5, 3.6), dpi=120)
    colours = ["#1f6feb", "#cf222e", "#bc4c00", "#8250df"]
    ax.bar(range(len(acc)), acc, yerr=[low, high], capsize=4, color=colours[: len(acc)])
    ax.axhline(result["chance"], color="k", ls="--", lw=1, label="chance (most common class)")
    for i, (a, h) in enumerate(zip(acc, high)):
        ax.text(i, a + h + 0.015, f"{a:.2f}", ha="center", fontsize=8)
    ax.set_xticks(range(len(acc)))
    ax.set_xticklabels([n.replace(" (", "\n(") for n in names], fontsize=7)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("accuracy (95 % interval)")
    ax.set_title(f"The same {result['n']} test images with and without the lungs", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    return _save(fig, out)


def plot_lung_examples(
    images: np.ndarray, masks: np.ndarray, labels: Sequence[str], out: Path
) -> Path:
    """One image per class as the model saw it in each variant of the lungs check."""
    first = {}
    for i, label in enumerate(labels):
        first.setdefault(label, i)
    rows = list(first.items())
    cols = ["original", *LUNG_VARIANTS]
    fig, axes = plt.subplots(
        len(rows), len(cols), figsize=(2.1 * len(cols), 2.2 * len(rows)), dpi=100, squeeze=False
    )
    for r, (label, i) in enumerate(rows):
        for c, name in enumerate(cols):
            img = images[i]
            if name in LUNG_VARIANTS:
                mode, fill = LUNG_VARIANTS[name]
                img = apply_lung_mask(images[i : i + 1], masks[i : i + 1], mode, fill, [i])[0]
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=0, vmax=255)
            ax.axis("off")
            if r == 0:
                ax.set_title(name.replace(" (", "\n("), fontsize=7)
        axes[r, 0].text(
            -5, images.shape[1] / 2, label, rotation=90, ha="right", va="center", fontsize=8
        )
    return _save(fig, out)


def _overlay(image: np.ndarray, cam: np.ndarray, mask: np.ndarray) -> np.ndarray:
    rgb = np.repeat(image[..., None] / 255.0, 3, axis=-1)
    heat = plt.get_cmap("jet")(np.clip(cam, 0, 1))[..., :3]
    out = 0.6 * rgb + 0.4 * heat
    lung = mask.astype(bool)
    inner = lung.copy()
    for axis in (0, 1):
        for shift in (1, -1):
            inner &= np.roll(lung, shift, axis)
    edge = lung & ~inner  # the lung outline, one pixel wide
    out[edge] = (1.0, 1.0, 1.0)
    return np.clip(out, 0, 1)


def plot_cam_outside(
    images: np.ndarray,
    masks: np.ndarray,
    cam: dict[str, Any],
    labels: Sequence[str],
    predicted: Sequence[str],
    out: Path,
    k: int = 8,
) -> Path:
    """The ``k`` images whose Grad-CAM mass lies most outside the lungs (white: lung edge)."""
    shares = np.array(cam["shares"], dtype=float)
    order = [i for i in np.argsort(np.where(np.isfinite(shares), shares, np.inf))][:k]
    cols = min(4, len(order))
    n_rows = int(np.ceil(len(order) / cols))
    fig, axes = plt.subplots(
        n_rows, cols, figsize=(2.6 * cols, 3.2 * n_rows), dpi=100, squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, j in zip(axes.flat, order):
        row = cam["rows"][j]
        ax.imshow(_overlay(images[row], np.asarray(cam["maps"][j], dtype=np.float32), masks[row]))
        ax.set_title(
            f"{labels[row]} -> {predicted[j]}\n{shares[j] * 100:.0f} % inside the lungs", fontsize=7
        )
    fig.suptitle("Grad-CAM maps that fall most outside the lungs", fontsize=9)
    return _save(fig, out)


def plot_cam_infection(
    images: np.ndarray,
    infection: np.ndarray,
    maps: Sequence[np.ndarray],
    ratios: Sequence[float],
    out: Path,
    k: int = 8,
) -> Path:
    """Grad-CAM over the infection (white outline): the ``k/2`` maps that miss it most and
    the ``k/2`` that find it best, each with its energy ratio (1 = chance)."""
    r = np.asarray(ratios, dtype=float)
    finite = [int(i) for i in np.argsort(np.where(np.isfinite(r), r, np.inf)) if np.isfinite(r[i])]
    order = finite[: k // 2] + [i for i in finite[::-1][: k // 2] if i not in finite[: k // 2]]
    cols = min(4, max(1, len(order)))
    n_rows = max(1, int(np.ceil(len(order) / cols)))
    fig, axes = plt.subplots(
        n_rows, cols, figsize=(2.6 * cols, 3.0 * n_rows), dpi=100, squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, j in zip(axes.flat, order):
        ax.imshow(_overlay(images[j], np.asarray(maps[j], dtype=np.float32), infection[j]))
        ax.set_title(f"energy ratio {r[j]:.2f}", fontsize=7)
    fig.suptitle("Grad-CAM and the infection (white): least and most on it", fontsize=9)
    return _save(fig, out)


def plot_cam_shares(cam: dict[str, Any], classes: Sequence[str], y: np.ndarray, out: Path) -> Path:
    """Per class: each image's share of Grad-CAM mass inside the lungs, and the lung area."""
    shares = np.array(cam["shares"], dtype=float)
    yy = np.asarray(y)[cam["rows"]]
    present = [c for c in range(len(classes)) if (yy == c).any()]
    fig, ax = plt.subplots(figsize=(6.5, 3.4), dpi=120)
    rng = np.random.default_rng(0)
    for x, c in enumerate(present):
        v = shares[(yy == c) & np.isfinite(shares)]
        ax.scatter(x + rng.uniform(-0.18, 0.18, len(v)), v, s=8, alpha=0.5, color="#1f6feb")
        if len(v):
            ax.plot([x - 0.3, x + 0.3], [v.mean()] * 2, color="k", lw=2)
        area = cam["per_class"].get(classes[c], {}).get("lung_area")
        if area is not None:
            ax.plot([x - 0.3, x + 0.3], [area] * 2, color="#cf222e", lw=1.5, ls="--")
    ax.set_xticks(range(len(present)))
    ax.set_xticklabels([classes[c] for c in present], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of Grad-CAM mass in the lungs")
    ax.set_title("Black: mean share; red dashed: lung area (an evenly spread map)", fontsize=8)
    return _save(fig, out)


def plot_probes(probes: dict[str, Any], out: Path) -> Path:
    """Cross-validated balanced accuracy of each acquisition probe, with chance."""
    names = list(probes["probes"])
    vals = np.array([probes["probes"][n]["balanced_accuracy"] for n in names])
    low = np.maximum(0, vals - np.array([probes["probes"][n]["ci"][0] for n in names]))
    high = np.maximum(0, np.array([probes["probes"][n]["ci"][1] for n in names]) - vals)
    fig, ax = plt.subplots(figsize=(6, 0.6 + 0.5 * len(names)), dpi=120)
    ax.barh(range(len(names)), vals, xerr=[low, high], capsize=3, color="#8250df")
    ax.axvline(probes["chance"], color="k", ls="--", lw=1, label="chance")
    for i, (v, h) in enumerate(zip(vals, high)):
        ax.text(v + h + 0.015, i, f"{v:.2f}", va="center", fontsize=8)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlim(0, 1.05)
    ax.set_xlabel(f"balanced accuracy, {probes['folds']}-fold cross-validated")
    ax.set_title(f"Predicting the class from acquisition alone ({probes['n']} images)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, out)
