"""Figures of the feature-reuse analysis and of the data-size axis (matplotlib, Agg)."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ..data.split import train_size_label

__all__ = ["plot_by_size", "plot_cka_pairs", "plot_units"]

_COLOURS = {"WT": "tab:blue", "ST": "tab:orange", "RI": "tab:green", "XR-WT": "tab:red",
            "XR-RI": "tab:brown"}  # fmt: skip

UNIT_METRICS = (
    ("cka_to_init", "CKA to its initialisation"),
    ("weight_change", "relative weight change"),
    ("reset_to_init_accuracy", "accuracy, unit reset to init"),
    ("reset_to_random_accuracy", "accuracy, unit re-drawn at random"),
    ("knn_accuracy", "k-NN probe accuracy"),
)


def _colour(kind: str) -> str:
    return _COLOURS.get(kind, "tab:purple" if kind.startswith("TF") else "tab:gray")


def plot_units(table: Sequence[dict[str, Any]], out: str | os.PathLike[str]) -> Path | None:
    """One panel per measurement (rows) and training size (columns), one line per model
    and initialisation over the units: the mean over seeds, a band from min to max."""
    metrics = [(k, t) for k, t in UNIT_METRICS if any(np.isfinite(r[k]) for r in table)]
    if not table or not metrics:
        return None
    sizes = sorted({r["train_size"] for r in table})
    fig, axes = plt.subplots(
        len(metrics),
        len(sizes),
        figsize=(4.2 * len(sizes) + 1, 2.4 * len(metrics) + 0.6),
        dpi=110,
        squeeze=False,
        sharex=True,
    )
    lines: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    names: dict[str, list[str]] = {}
    for r in table:
        for key, _ in metrics:
            lines[(key, r["train_size"], r["model"], r["init"], r["freeze"])][
                r["unit_index"]
            ].append(r[key])
        names.setdefault(r["model"], [])
        if r["unit_index"] >= len(names[r["model"]]):
            names[r["model"]].append(r["unit"])
    multi_model = len(names) > 1
    for (key, size, model, kind, freeze), by_unit in sorted(lines.items()):
        ax = axes[[k for k, _ in metrics].index(key), sizes.index(size)]
        units = sorted(by_unit)
        vals = [np.asarray(by_unit[u], dtype=float) for u in units]
        mean = np.array([np.nanmean(v) if np.isfinite(v).any() else np.nan for v in vals])
        label = (
            f"{kind}"
            + (f" {model}" if multi_model else "")
            + (f" (freeze {freeze})" if freeze != "none" else "")
        )
        style = "o-" if freeze == "none" else "s--"  # a frozen prefix: dashed
        ax.plot(units, mean, style, ms=3, color=_colour(kind), label=label)
        if any(len(v) > 1 for v in vals):
            lo = [np.nanmin(v) if np.isfinite(v).any() else np.nan for v in vals]
            hi = [np.nanmax(v) if np.isfinite(v).any() else np.nan for v in vals]
            ax.fill_between(units, lo, hi, color=_colour(kind), alpha=0.15, lw=0)
    for i, (_key, title) in enumerate(metrics):
        for j, size in enumerate(sizes):
            ax = axes[i, j]
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(train_size_label(size), fontsize=10)
            if j == 0:
                ax.set_ylabel(title, fontsize=8)
            if i == len(metrics) - 1:
                ax.set_xlabel("unit (0 = stem)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 6), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(out)
    plt.close(fig)
    return Path(out)


def plot_cka_pairs(pairs: Sequence[dict[str, Any]], out: str | os.PathLike[str]) -> Path | None:
    """Unit-by-unit CKA heat maps for each pair of initialisations (the first seed and the
    largest training size of each), and their diagonals as lines."""
    if not pairs:
        return None
    chosen: dict[tuple, dict[str, Any]] = {}
    for p in sorted(pairs, key=lambda p: (-p["train_size"], p["seed"])):
        chosen.setdefault((p["model"], p["freeze"], p["a_init"], p["b_init"]), p)
    shown = list(chosen.values())[:6]
    fig, axes = plt.subplots(
        1, len(shown) + 1, figsize=(3.6 * (len(shown) + 1), 3.6), dpi=110, squeeze=False
    )
    for ax, p in zip(axes[0], shown):
        m = np.asarray(p["cka"], dtype=float)
        im = ax.imshow(m, vmin=0, vmax=1, cmap="magma", origin="lower")
        ax.set_xlabel(f"{p['b_init']} unit")
        ax.set_ylabel(f"{p['a_init']} unit")
        ax.set_title(
            f"{p['a_init']} vs {p['b_init']}\n"
            f"{train_size_label(p['train_size'])}, seed {p['seed']}",
            fontsize=9,
        )
        axes[0, -1].plot(np.diag(m), "o-", ms=3, label=f"{p['a_init']} vs {p['b_init']}")
    fig.colorbar(im, ax=axes[0, :-1].tolist(), shrink=0.8, label="linear CKA")
    ax = axes[0, -1]
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("unit (0 = stem)")
    ax.set_ylabel("CKA, same unit")
    ax.set_title("diagonals", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return Path(out)


def plot_by_size(
    rows: Sequence[dict[str, Any]],
    out: str | os.PathLike[str],
    *,
    metric: str = "accuracy",
    line: str = "init",
    ylabel: str = "test accuracy",
) -> Path | None:
    """``metric`` against the training-set size, one line per ``line`` value (mean over
    seeds, each seed a dot). ``rows`` need ``train_images`` (or ``train_size``)."""
    xs = "train_images" if all("train_images" in r for r in rows) else "train_size"
    groups: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.get(metric) is not None:
            groups[str(r[line])][float(r[xs])].append(float(r[metric]))
    if not groups or all(len(g) < 2 for g in groups.values()):
        return None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for i, (name, by_x) in enumerate(sorted(groups.items())):
        x = sorted(by_x)
        colour = _COLOURS.get(name, f"C{i}")
        ax.plot(x, [np.mean(by_x[v]) for v in x], "o-", color=colour, label=name)
        for v in x:
            ax.scatter([v] * len(by_x[v]), by_x[v], s=10, color=colour, alpha=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("training images" if xs == "train_images" else "training-set size")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return Path(out)
