"""Collecting finished runs into tables: per-run results, per-arm summaries, comparisons."""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import StudyConfig
from ..stats import holm, mcnemar_exact, paired_bootstrap, t_interval, wilson_interval

__all__ = ["Comparison", "StudyResults", "collect_results", "compare", "summarise"]

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "ece")


@dataclass
class StudyResults:
    """Finished runs of a study, with what the report needs of each."""

    rows: list[dict[str, Any]]
    correct: dict[str, np.ndarray]  # cell id -> per-test-image correctness, path order
    paths: list[str]  # test images, in the order of ``correct``
    missing: list[str] = field(default_factory=list)  # cells without results yet


@dataclass
class Comparison:
    model: str
    a: str
    b: str
    difference: float  # mean accuracy of a minus b
    ci: tuple[float, float]
    p: float
    p_adjusted: float
    mcnemar: tuple[int, int, float]  # (only a right, only b right, p) for the first seed
    seeds: int
    alpha: float

    @property
    def significant(self) -> bool:
        return self.p_adjusted < self.alpha

    def verdict(self) -> str:
        """One sentence: which training type is better, by how much, and whether it is real."""
        if self.significant:
            # orient the difference and its interval as better minus worse
            flip = self.difference < 0
            better, worse = (self.b, self.a) if flip else (self.a, self.b)
            low, high = (-self.ci[1], -self.ci[0]) if flip else self.ci
            return (f"{self.model}: '{better}' beats '{worse}' by {abs(self.difference) * 100:.1f} "
                    f"accuracy points (95% CI [{low * 100:+.1f}, {high * 100:+.1f}]); significant "
                    f"(Holm-adjusted p = {self.p_adjusted:.3g} < {self.alpha:g})")  # fmt: skip
        return (f"{self.model}: '{self.a}' vs '{self.b}': no significant difference "
                f"({self.difference * 100:+.1f} points for the first, 95% CI "
                f"[{self.ci[0] * 100:+.1f}, {self.ci[1] * 100:+.1f}]; Holm-adjusted p = "
                f"{self.p_adjusted:.3g})")  # fmt: skip


def _read_predictions(path: Path) -> dict[str, bool]:
    with open(path, newline="") as f:
        return {r["path"]: r["label"] == r["pred"] for r in csv.DictReader(f)}


def collect_results(study: StudyConfig, out: Path) -> StudyResults:
    """Read every finished cell's metrics, card and predictions."""
    rows, correct, missing = [], {}, []
    paths: list[str] | None = None
    for cell in study.cells:
        run = out / "runs" / cell.id
        if not (run / "metrics.json").exists():
            missing.append(cell.id)
            continue
        m = json.loads((run / "metrics.json").read_text())
        card = json.loads((run / "model_card.json").read_text())
        preds = _read_predictions(run / "predictions.csv")
        paths = paths or sorted(preds)
        correct[cell.id] = np.array([preds[p] for p in paths], dtype=bool)
        n_right = round(m["accuracy"] * m["n"])
        low, high = wilson_interval(n_right, m["n"])
        row = {
            "cell": cell.id, "group": cell.group, "label": cell.label, "model": cell.model,
            "weights": cell.config.weights, "freeze": cell.config.freeze, "seed": cell.seed,
            "trainable_params": card["freeze"]["trainable_params"],
            "total_params": card["freeze"]["total_params"],
            "epochs_run": m.get("epochs_run"), "best_epoch": m.get("best_epoch"),
            "train_seconds": round(float(m.get("train_seconds", 0.0)), 2),
            "wall_seconds": round(float(m.get("wall_seconds", 0.0)), 2), "n_test": m["n"],
            **{k: m.get(k) for k in (*METRICS, "nll", "loss")},
            "accuracy_ci_low": low, "accuracy_ci_high": high,
            **{f"f1_{c}": v["f1"] for c, v in m["per_class"].items()},
        }  # fmt: skip
        rows.append(row)
    return StudyResults(rows, correct, paths or [], missing)


def results_csv(results: StudyResults) -> str:
    if not results.rows:
        return ""
    keys = list(dict.fromkeys(k for r in results.rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for r in results.rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def summarise(results: StudyResults, metric: str = "accuracy") -> dict[tuple[str, str], dict]:
    """``{(label, model): {mean, std, low, high, n, values}}`` over seeds.

    The interval is a Student-t interval over seeds when there are two or more; for a single
    run it is the Wilson interval of its test accuracy (binomial over test images).
    """
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in results.rows:
        groups[(r["label"], r["model"])].append(r)
    out = {}
    for key, rows in groups.items():
        values = [float(r[metric]) for r in rows if r[metric] is not None]
        if not values:
            continue
        if len(values) >= 2:
            low, high = t_interval(values)
            if metric != "ece":  # scores bounded by 0 and 1
                low, high = max(0.0, low), min(1.0, high)
        elif metric == "accuracy":
            low, high = rows[0]["accuracy_ci_low"], rows[0]["accuracy_ci_high"]
        else:
            low = high = float("nan")
        out[key] = {"mean": float(np.mean(values)),
                    "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                    "low": low, "high": high, "n": len(values), "values": values}  # fmt: skip
    return out


def table_groups(results: StudyResults) -> list[tuple[list[str], list[str]]]:
    """Split models into tables the way the original study did.

    Models that were trained with the same training types share a table (ResNet-18 and
    ResNet-34 in one, the ViT in another). Returns ``[(models, labels), ...]``.
    """
    labels_of: dict[str, list[str]] = defaultdict(list)
    for r in results.rows:
        if r["label"] not in labels_of[r["model"]]:
            labels_of[r["model"]].append(r["label"])
    tables: list[tuple[list[str], list[str]]] = []
    for model, labels in labels_of.items():
        for models, labs in tables:
            if set(labs) == set(labels):
                models.append(model)
                break
        else:
            tables.append(([model], list(labels)))
    return tables


def compare(
    results: StudyResults, alpha: float = 0.05, n_resamples: int = 2000
) -> list[Comparison]:
    """Every pair of training types within each model, on the shared test images.

    The accuracy difference is tested with a paired bootstrap over test images (seeds of a
    training type averaged per image); p-values are Holm-adjusted over all pairs of the
    study. McNemar's exact test on the first shared seed is reported beside it.
    """
    by_arm: dict[tuple[str, str], dict[int, np.ndarray]] = defaultdict(dict)
    for r in results.rows:
        by_arm[(r["model"], r["label"])][r["seed"]] = results.correct[r["cell"]]
    raw = []
    models = list(dict.fromkeys(r["model"] for r in results.rows))
    for model in models:
        labels = [lab for (m, lab) in by_arm if m == model]
        for a, b in itertools.combinations(labels, 2):
            runs_a, runs_b = by_arm[(model, a)], by_arm[(model, b)]
            seeds = sorted(set(runs_a) & set(runs_b))
            if not seeds:
                continue
            ma = np.stack([runs_a[s] for s in seeds])  # (seeds, images)
            mb = np.stack([runs_b[s] for s in seeds])
            diff, ci, p = paired_bootstrap(ma, mb, n_resamples=n_resamples)
            raw.append((model, a, b, diff, ci, p, mcnemar_exact(ma[0], mb[0]), len(seeds)))
    adjusted = holm([r[5] for r in raw]) if raw else []
    return [Comparison(m, a, b, d, ci, p, pa, mc, n, alpha)
            for (m, a, b, d, ci, p, mc, n), pa in zip(raw, adjusted)]  # fmt: skip


def comparisons_csv(comparisons: list[Comparison]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "a", "b", "accuracy_difference", "ci_low", "ci_high", "p_bootstrap",
                "p_holm", "significant", "mcnemar_only_a", "mcnemar_only_b", "mcnemar_p",
                "seeds", "verdict"])  # fmt: skip
    for c in comparisons:
        w.writerow([c.model, c.a, c.b, f"{c.difference:.6g}", f"{c.ci[0]:.6g}", f"{c.ci[1]:.6g}",
                    f"{c.p:.6g}", f"{c.p_adjusted:.6g}", c.significant, c.mcnemar[0],
                    c.mcnemar[1], f"{c.mcnemar[2]:.6g}", c.seeds, c.verdict()])  # fmt: skip
    return buf.getvalue()


def _fmt(s: dict | None) -> str:
    if s is None:
        return "-"
    text = f"{s['mean']:.4f}"
    if s["n"] > 1:
        text += f" ± {s['std']:.4f}"
    if np.isfinite(s["low"]):
        text += f" [{s['low']:.3f}, {s['high']:.3f}]"
    return text


def summary_tables(results: StudyResults) -> list[dict[str, Any]]:
    """The data of every summary table: title, models, rows of formatted cells."""
    tables = []
    for metric, title in (("accuracy", "Accuracy"), ("macro_f1", "Macro-F1"),
                          ("balanced_accuracy", "Balanced accuracy")):  # fmt: skip
        stats = summarise(results, metric)
        for models, labels in table_groups(results):
            tables.append({
                "metric": metric, "title": f"{title}: {', '.join(models)}", "models": models,
                "rows": [[label, *(_fmt(stats.get((label, m))) for m in models)]
                         for label in labels],
            })  # fmt: skip
    return tables


def summary_markdown(study: StudyConfig, results: StudyResults,
                     comparisons: list[Comparison]) -> str:  # fmt: skip
    seeds = sorted({r["seed"] for r in results.rows})
    lines = [f"# Results summary: {study.settings.name}", ""]
    if study.settings.description:
        lines += [study.settings.description, ""]
    lines += [
        f"{len(results.rows)} runs, {len(seeds)} seed(s) per cell, "
        f"{len(results.paths)} shared test images. Cells: mean ± std over seeds "
        "[95 % interval: Student t over seeds, or Wilson over test images for one seed].",
        "",
    ]
    if results.missing:
        lines += [f"**Incomplete:** {len(results.missing)} cell(s) have no results yet: "
                  f"{', '.join(results.missing)}", ""]  # fmt: skip
    for t in summary_tables(results):
        lines += [f"## {t['title']}", "",
                  "| Training type | " + " | ".join(t["models"]) + " |",
                  "|---|" + "---|" * len(t["models"])]  # fmt: skip
        lines += ["| " + " | ".join(row) + " |" for row in t["rows"]]
        lines.append("")
    lines += ["## Paired comparisons (same test images)", ""]
    if comparisons:
        lines += [f"- {'**significant**' if c.significant else 'not significant'}: {c.verdict()}"
                  for c in comparisons]  # fmt: skip
        lines += [
            "",
            "Paired bootstrap over test images (seeds averaged per image), "
            "Holm-Bonferroni across all pairs; McNemar's exact test in comparisons.csv.",
        ]
    else:
        lines.append("No pairs to compare yet.")
    return "\n".join(lines) + "\n"
