"""External sets in the report: in distribution against elsewhere, per training type.

For every ``[study] external`` set the finished runs' stored results (``<run>/external/``,
see :mod:`cxrlab.runs.external_sets`) become columns of ``results.csv``
(``<set>_accuracy``, ``<set>_macro_f1``, ...), a table per set (in-distribution accuracy, the
set's accuracy, macro-F1, AUROC and ECE before and after each run's temperature, and the
drop), a heat map of where each of the set's classes went, and the same two-level
comparisons of training types as in distribution, over the set's scored images.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ... import run_files
from ...evaluation.intervals import wilson_interval
from ...runs.external_sets import ExternalSet, read_external
from ..study_config import StudyConfig
from .results import Comparison, StudyResults, compare, format_stat, summarise

__all__ = [
    "EXTERNAL_METRICS",
    "ExternalResults",
    "collect_external",
    "external_markdown",
    "plot_routing",
]

#: The metrics each run gets per external set, as ``<set>_<metric>`` columns.
EXTERNAL_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "ece", "ece_calibrated")

NOT_EXTERNAL = "NOT EXTERNAL"


@dataclass
class ExternalResults:
    """One external set across the study's finished runs.

    ``results`` is a :class:`StudyResults` over the runs scored on the set (rows are the
    study's rows; ``correct`` and ``paths`` are the set's scored images), so the
    in-distribution comparisons run on it unchanged.
    """

    ext: ExternalSet
    results: StudyResults
    errors: dict[str, str] = field(default_factory=dict)  # cell -> why it was not scored
    routing: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # cell -> routing
    copies: dict[str, int] = field(default_factory=dict)  # cell -> copies left out
    n_images: dict[str, int] = field(default_factory=dict)  # cell -> the set's images
    not_external: bool = False  # some run found more than NOT_EXTERNAL_SHARE copies

    @property
    def name(self) -> str:
        return self.ext.name

    def flag(self) -> str:
        """The mark beside every number of a set that is mostly copies of the training data."""
        return f" ({NOT_EXTERNAL})" if self.not_external else ""


def _read_correct(path: Path) -> dict[str, bool]:
    with open(path, newline="") as f:
        return {r["path"]: r["label"] == r["pred"] for r in csv.DictReader(f)}


def collect_external(study: StudyConfig, out: Path, results: StudyResults) -> list[ExternalResults]:
    """Read every finished run's result on each external set; adds the ``<set>_*`` columns
    to ``results.rows`` (``<set>_error`` where a run could not be scored)."""
    collected = []
    for ext in study.settings.external:
        rows, correct, errors, routing, copies, sizes = [], {}, {}, {}, {}, {}
        flagged = False
        for row in results.rows:
            stored = read_external(out / "runs" / row["cell"], ext.name)
            if stored is None:
                continue
            if "error" in stored:
                errors[row["cell"]] = row[f"{ext.name}_error"] = stored["error"]
                continue
            preds = (
                out / "runs" / row["cell"] / run_files.EXTERNAL_DIR / f"{ext.name}.predictions.csv"
            )
            correct[row["cell"]] = _read_correct(preds)
            n, acc = int(stored["n"]), float(stored["accuracy"])
            low, high = wilson_interval(round(acc * n), n)
            flagged |= bool(stored.get("not_external"))
            row.update({f"{ext.name}_{m}": stored.get(m) for m in EXTERNAL_METRICS})
            row.update({
                f"{ext.name}_accuracy_ci_low": low, f"{ext.name}_accuracy_ci_high": high,
                f"{ext.name}_n": n, f"{ext.name}_copies_left_out": stored.get("excluded_copies"),
                f"{ext.name}_copy_share": stored.get("copy_share"),
                f"{ext.name}_not_external": bool(stored.get("not_external")),
                f"{ext.name}_drop": float(row["accuracy"]) - acc,
            })  # fmt: skip
            rows.append(row)
            routing[row["cell"]] = stored.get("routing", {})
            copies[row["cell"]] = int(stored.get("excluded_copies") or 0)
            sizes[row["cell"]] = sum(sum(v.values()) for v in routing[row["cell"]].values())
        # every run of the study shares one split, so the same images are scored; pair
        # the runs on the images all of them scored
        shared = sorted(set.intersection(*(set(c) for c in correct.values()))) if correct else []
        arrays = {cell: np.array([c[p] for p in shared], dtype=bool) for cell, c in correct.items()}
        sub = StudyResults(rows, arrays, shared)
        collected.append(
            ExternalResults(ext, sub, errors, routing, copies, sizes, not_external=flagged)
        )
    return collected


def _fmt(s: dict | None, flag: str = "") -> str:
    return format_stat(s, 3) + (flag if s is not None else "")


def external_table(ext: ExternalResults) -> tuple[list[str], list[list[str]]]:
    """Per training type and model: in distribution, on the set, the drop, and the rest."""
    name, res = ext.name, ext.results
    stats = {m: summarise(res, f"{name}_{m}") for m in EXTERNAL_METRICS}
    own = summarise(res, "accuracy")
    drop = summarise(res, f"{name}_drop")
    header = ["Training type", "model", "in distribution", f"{name} accuracy", "drop (points)",
              f"{name} macro-F1", f"{name} AUROC", f"{name} ECE (calibrated)"]  # fmt: skip
    rows = []
    for key in own:
        d = drop.get(key)
        ece, cal = stats["ece"].get(key), stats["ece_calibrated"].get(key)
        rows.append([
            key[0], key[1], _fmt(own.get(key)), _fmt(stats["accuracy"].get(key), ext.flag()),
            "-" if d is None else f"{d['mean'] * 100:.1f}" + (
                f" ± {d['std'] * 100:.1f}" if d["n"] > 1 else ""),
            _fmt(stats["macro_f1"].get(key)), _fmt(stats["auroc"].get(key)),
            ("-" if ece is None else f"{ece['mean']:.3f}")
            + ("" if cal is None else f" ({cal['mean']:.3f})"),
        ])  # fmt: skip
    return header, rows


def external_comparisons(ext: ExternalResults, alpha: float, n_resamples: int) -> list[Comparison]:
    """Training types compared on the set's scored images, as in distribution."""
    if not ext.results.paths:
        return []
    return compare(ext.results, alpha, n_resamples)


def _describe(ext: ExternalResults) -> str:
    images = max(ext.n_images.values(), default=0)
    copies = sorted(set(ext.copies.values()))
    left = "/".join(map(str, copies)) or "0"
    cmap = ", ".join(f"{k} -> {'not scored' if v == '-' else v}"
                     for k, v in sorted(ext.ext.class_map.items()))  # fmt: skip
    text = (f"`{ext.ext.data}`: {images} images; {left} copies of the study's training or "
            f"validation images (exact or near) left out before any number; "
            f"{len(ext.results.paths)} images scored by every run")  # fmt: skip
    if cmap:
        text += f"; classes mapped: {cmap}"
    if ext.not_external:
        text += (f". **{NOT_EXTERNAL}**: more than 20 % of its images copy the training data, "
                 "so its numbers are partly a memory test")  # fmt: skip
    return text + "."


def external_markdown(
    externals: list[ExternalResults], comparisons: dict[str, list[Comparison]]
) -> list[str]:
    """The summary's section on the external sets."""
    from .results import STATUS_MARKDOWN, markdown_table

    if not externals:
        return []
    lines = ["## External sets: does it hold up elsewhere?", ""]
    for ext in externals:
        lines += [f"### {ext.name}", "", _describe(ext), ""]
        header, rows = external_table(ext)
        if rows:
            lines += markdown_table(header, rows)
            lines += ["", "Accuracy as mean ± std over seeds [95 % interval]; the drop is each "
                      "seed's in-distribution accuracy minus its accuracy here; ECE of the "
                      "runs' probabilities (in brackets after each run's temperature, fitted on "
                      "its validation split).", ""]  # fmt: skip
        for cell, why in ext.errors.items():
            lines.append(f"- not scored: **{cell}**: {why}")
        cmp = comparisons.get(ext.name, [])
        if cmp:
            lines += [f"Paired comparisons on {ext.name} ({len(ext.results.paths)} images):", ""]
            lines += [f"- {STATUS_MARKDOWN[c.status]}: {c.verdict()}{ext.flag()}" for c in cmp]
            lines.append("")
    return lines


def _mean_routing(ext: ExternalResults) -> dict[tuple[str, str], dict[str, dict[str, float]]]:
    """Per training type and model, the share of each dataset class sent to each model class
    (mean over seeds)."""
    by_arm: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in ext.results.rows:
        if row["cell"] in ext.routing:
            by_arm[(row["label"], row["model"])].append(ext.routing[row["cell"]])
    out = {}
    for key, routings in by_arm.items():
        shares: dict[str, dict[str, float]] = {}
        for src in routings[0]:
            rows = [r[src] for r in routings if src in r]
            total = [max(1, sum(r.values())) for r in rows]
            shares[src] = {c: float(np.mean([r[c] / t for r, t in zip(rows, total)]))
                           for c in rows[0]}  # fmt: skip
        out[key] = shares
    return out


def plot_routing(ext: ExternalResults, out: Path) -> Path | None:
    """Where each class of the set went: a small heat map per training type (rows: the
    set's classes; columns: the model's; share of the row, mean over seeds)."""
    arms = _mean_routing(ext)
    if not arms:
        return None
    n = len(arms)
    cols = min(n, 4)
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 3.4 * nrows), dpi=110,
                             squeeze=False)  # fmt: skip
    for ax, ((label, model), shares) in zip(axes.flat, arms.items()):
        src = list(shares)
        dst = list(next(iter(shares.values())))
        m = np.array([[shares[s][d] for d in dst] for s in src])
        ax.imshow(m, vmin=0, vmax=1, cmap="Blues")
        for i in range(len(src)):
            for j in range(len(dst)):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] > 0.6 else "black")  # fmt: skip
        ax.set_xticks(range(len(dst)))
        ax.set_xticklabels(dst, rotation=35, ha="right", fontsize=7)
        ax.set_yticks(range(len(src)))
        ax.set_yticklabels(src, fontsize=7)
        ax.set_title(f"{label}\n{model}" if len(label) < 30 else f"{label[:40]}\n{model}",
                     fontsize=7)  # fmt: skip
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"{ext.name}: where each class went (rows: {ext.name}'s classes; "
                 "share of the row, mean over seeds)", fontsize=8)  # fmt: skip
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out
