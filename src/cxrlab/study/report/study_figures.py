"""Study-level figures: accuracy with intervals, and first-stage feature maps."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from ... import run_files
from ...data import load_gray8, resize_gray8
from ...data.split import load_split
from ...runs.folder import load_card
from ..study_config import StudyConfig
from .results import Comparison, StudyResults, summarise, table_groups

__all__ = ["plot_accuracy_intervals", "plot_comparisons", "plot_feature_maps"]

_STATUS_COLOUR = {"significant": "#116329", "not significant": "#57606a",
                  "not established": "#9a6700"}  # fmt: skip


def plot_comparisons(comparisons: list[Comparison], out: Path) -> Path | None:
    """One row per comparison: the interval over seeds and images, the image-only interval
    (thin, grey), and each seed's own difference as a dot, so a reader sees the runs behind
    every verdict."""
    if not comparisons:
        return None
    n = len(comparisons)
    fig, ax = plt.subplots(figsize=(9, 0.9 + 0.42 * n), dpi=120)
    for i, c in enumerate(comparisons):
        y = n - 1 - i
        colour = _STATUS_COLOUR[c.status]
        ax.plot([c.image_ci[0] * 100, c.image_ci[1] * 100], [y - 0.18] * 2, color="#8c959f",
                lw=1.2, solid_capstyle="butt")  # fmt: skip
        ax.errorbar([c.difference * 100], [y], xerr=[[(c.difference - c.ci[0]) * 100],
                    [(c.ci[1] - c.difference) * 100]], fmt="D", color=colour, capsize=4,
                    ms=5, lw=2)  # fmt: skip
        seeds = list(c.seed_differences().values())
        ax.scatter([d * 100 for d in seeds], [y + 0.18] * len(seeds), s=16, color="k",
                   alpha=0.6, zorder=3)  # fmt: skip
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(n))
    ax.set_yticklabels([f"{c.model}: {c.a}\n  vs {c.b} ({c.status})"
                        for c in reversed(comparisons)], fontsize=7)  # fmt: skip
    ax.set_xlabel("accuracy difference, first minus second (points)")
    ax.set_ylim(-0.7, n - 0.3)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("95 % interval over seeds and test images (diamond), over test images only "
                 "(grey),\nand each seed's own difference (dots)", fontsize=8)  # fmt: skip
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_accuracy_intervals(results: StudyResults, out: Path) -> Path | None:
    """Mean test accuracy per training type and model, 95 % interval, seeds as dots."""
    if not results.rows:
        return None
    stats = summarise(results, "accuracy")
    groups = table_groups(results)
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.2), dpi=120,
                             squeeze=False)  # fmt: skip
    for ax, (models, labels) in zip(axes[0], groups):
        width = 0.8 / len(models)
        for j, model in enumerate(models):
            xs, means, lows, highs = [], [], [], []
            for i, label in enumerate(labels):
                s = stats.get((label, model))
                if s is None:
                    continue
                x = i + (j - (len(models) - 1) / 2) * width
                xs.append(x)
                means.append(s["mean"])
                lows.append(s["mean"] - s["low"] if np.isfinite(s["low"]) else 0)
                highs.append(s["high"] - s["mean"] if np.isfinite(s["high"]) else 0)
                ax.scatter([x] * len(s["values"]), s["values"], s=10, color="k", alpha=0.4,
                           zorder=3)  # fmt: skip
            ax.errorbar(xs, means, yerr=[lows, highs], fmt="o", capsize=4, label=model)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("test accuracy")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Test accuracy by training type (95 % interval)")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


#: The module whose output is the first stage's feature map, per model family.
_STEM_OUTPUT = {"resnet": "relu", "efficientnet": "bn1"}


def _stem_module(model_name: str) -> str | None:
    return next((m for k, m in _STEM_OUTPUT.items() if model_name.startswith(k)), None)


def _stem_features(run_dir: Path, image: np.ndarray) -> np.ndarray:
    """First-stage feature maps (after the stem's conv, norm and activation) on one image."""
    from ...runs import load_run_model

    model, card = load_run_model(run_dir)
    size = card.image_size
    module = model.net.get_submodule(_stem_module(card.model) or "")
    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    try:
        with torch.no_grad():
            model(torch.from_numpy(resize_gray8(image, size).copy())[None, None])  # (1, 1, H, W)
    finally:
        handle.remove()
    return captured[0][0].float().numpy()  # (C, H/2, W/2)


def plot_feature_maps(study: StudyConfig, results: StudyResults, out_dir: Path,
                      study_dir: Path) -> list[Path]:  # fmt: skip
    """The original's ``features_pretrained.png`` / ``features_non_pretrained.png``.

    Uses the first CNN (ResNet or EfficientNet) in the study that has a pretrained run
    (0.5 frozen preferred) and a from-scratch run with the same seed, on the first test image.
    """
    rows = [r for r in results.rows if _stem_module(str(r["model"]))]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        pre = sorted((r for r in mine if r["weights"] == "imagenet"),
                     key=lambda r: (r["freeze"] != "0.5", r["seed"]))  # fmt: skip
        for p in pre:
            scratch = [r for r in mine if r["weights"] == "none" and r["seed"] == p["seed"]]
            if scratch:
                break
        else:
            continue
        split = load_split(study_dir / run_files.SPLIT)
        first = split.records[split.indices("test")[0]]
        root = Path(_data_root(study_dir / "runs" / p["cell"]))
        image = load_gray8(root / first.path)
        paths = []
        for row, name, title in (
            (p, "features_pretrained.png", "pretrained"),
            (scratch[0], "features_non_pretrained.png", "not pretrained"),
        ):
            feats = _stem_features(study_dir / "runs" / row["cell"], image)
            fig, axes = plt.subplots(4, 5, figsize=(8, 6.8), dpi=110)
            axes[0, 0].imshow(image, cmap="gray")
            axes[0, 0].set_title("input", fontsize=8)
            for k, ax in enumerate(axes.flat[1:]):
                ax.imshow(feats[k], cmap="viridis")
                ax.set_title(f"ch {k}", fontsize=7)
            for ax in axes.flat:
                ax.axis("off")
            fig.suptitle(f"{model} first-stage feature maps, {title} ({row['label']})",
                         fontsize=9)  # fmt: skip
            fig.tight_layout()
            fig.savefig(out_dir / name)
            plt.close(fig)
            paths.append(out_dir / name)
        return paths
    return []


def _data_root(run_dir: Path) -> str:
    return load_card(run_dir).data.root
