"""Collecting finished runs into tables: per-run results, per-arm summaries, comparisons."""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ... import run_files
from ...data.split import Split, train_size_label
from ...runs.folder import RunDir, load_card
from ..stats import (
    holm,
    mcnemar_exact,
    paired_bootstrap,
    seeds_needed,
    t_interval,
    two_level_bootstrap,
    wilson_interval,
)
from ..study_config import StudyConfig
from .flags import run_flags
from .trials import select_trial, validation_scores

__all__ = ["MIN_SEEDS", "Comparison", "StudyResults", "collect_results", "compare", "summarise"]

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "ece")


@dataclass
class StudyResults:
    """Finished runs of a study, with what the report needs of each."""

    rows: list[dict[str, Any]]
    correct: dict[str, np.ndarray]  # cell id -> per-test-image correctness, path order
    paths: list[str]  # test images, in the order of ``correct``
    missing: list[str] = field(default_factory=list)  # cells without results yet
    trials: list[dict[str, Any]] = field(default_factory=list)  # every search candidate


#: Below this many seeds per training type, training noise is not estimated well enough
#: for a verdict: the comparison is reported as "not established".
MIN_SEEDS = 3


def _points(x: float) -> str:
    return f"{x * 100:+.1f}"


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"= {p:.3g}"


@dataclass
class Comparison:
    """Two training types of one model on the shared test images.

    ``difference``, ``ci`` and ``p`` come from the two-level bootstrap (seeds and images,
    see :func:`~cxrlab.study.stats.two_level_bootstrap`); ``image_ci`` and ``image_p`` from
    the image-only bootstrap that holds the training runs fixed, kept for contrast.
    """

    model: str
    a: str
    b: str
    difference: float  # mean accuracy of a minus b
    ci: tuple[float, float]
    p: float
    p_adjusted: float
    seed_accuracy_a: dict[int, float]  # seed -> test accuracy of that run
    seed_accuracy_b: dict[int, float]
    mcnemar: dict[int, tuple[int, int, float]]  # shared seed -> (only a right, only b, p)
    alpha: float = 0.05
    image_ci: tuple[float, float] = (float("nan"), float("nan"))
    image_p: float = float("nan")
    seeds_needed: int | None = None
    flags: dict[str, str] = field(default_factory=dict)  # arm label -> why it is suspect

    @property
    def seeds(self) -> int:
        """Seeds of the smaller arm."""
        return min(len(self.seed_accuracy_a), len(self.seed_accuracy_b))

    @property
    def established(self) -> bool:
        """Whether both arms have enough seeds to estimate training noise."""
        return self.seeds >= MIN_SEEDS

    @property
    def significant(self) -> bool:
        return self.established and self.p_adjusted < self.alpha

    @property
    def status(self) -> str:
        """``significant``, ``not significant`` or ``not established``."""
        if not self.established:
            return "not established"
        return "significant" if self.significant else "not significant"

    def seed_differences(self) -> dict[int, float]:
        """Accuracy of A minus B for each seed both arms ran (the runs behind a verdict)."""
        shared = sorted(set(self.seed_accuracy_a) & set(self.seed_accuracy_b))
        return {s: self.seed_accuracy_a[s] - self.seed_accuracy_b[s] for s in shared}

    def _seeds_text(self) -> str:
        na, nb = len(self.seed_accuracy_a), len(self.seed_accuracy_b)
        return f"{na} seed{'s' * (na != 1)} each" if na == nb else f"{na} and {nb} seeds"

    def _needed_text(self) -> str:
        if self.seeds_needed is None:
            return ""
        if self.seeds_needed > 100:
            return "; at the observed seed spread more than 100 seeds per type would be needed"
        return (
            f"; at the observed seed spread about {self.seeds_needed} seeds per type would "
            "find a difference this large 80% of the time (before the Holm adjustment)"
        )

    def verdict(self) -> str:
        """One sentence: which training type is better, by how much, and whether it is real;
        with a caution when either training type has a run that failed to train."""
        caution = "".join(f" CAUTION: '{arm}' is a questionable baseline ({why}; see the "
                          "flagged runs)." for arm, why in self.flags.items())  # fmt: skip
        return self._verdict() + caution

    def _verdict(self) -> str:
        if not self.established:
            spread = ", ".join(_points(d) for d in self.seed_differences().values())
            n = self.seeds
            return (f"{self.model}: '{self.a}' vs '{self.b}': not established "
                    f"({_points(self.difference)} points for the first, but with {n} seed"
                    f"{'s' * (n != 1)} per training type the training noise cannot be "
                    f"estimated; seed-level differences {spread or 'none'}; over test images "
                    f"alone 95% CI [{_points(self.image_ci[0])}, {_points(self.image_ci[1])}])"
                    f"{self._needed_text()}")  # fmt: skip
        if self.significant:
            # orient the difference and its interval as better minus worse
            flip = self.difference < 0
            better, worse = (self.b, self.a) if flip else (self.a, self.b)
            low, high = (-self.ci[1], -self.ci[0]) if flip else self.ci
            below = "" if self.p_adjusted < 0.001 else f" < {self.alpha:g}"
            return (f"{self.model}: '{better}' beats '{worse}' by {abs(self.difference) * 100:.1f} "
                    f"accuracy points (95% CI [{_points(low)}, {_points(high)}] over seeds and "
                    f"test images, {self._seeds_text()}); significant (Holm-adjusted "
                    f"p {_p(self.p_adjusted)}{below})")  # fmt: skip
        return (f"{self.model}: '{self.a}' vs '{self.b}': no significant difference "
                f"({_points(self.difference)} points for the first, 95% CI "
                f"[{_points(self.ci[0])}, {_points(self.ci[1])}] over seeds and test images, "
                f"{self._seeds_text()}; Holm-adjusted p {_p(self.p_adjusted)})"
                f"{self._needed_text()}")  # fmt: skip


def _read_predictions(path: Path) -> dict[str, bool]:
    with open(path, newline="") as f:
        return {r["path"]: r["label"] == r["pred"] for r in csv.DictReader(f)}


def _choose_trials(study: StudyConfig, out: Path) -> tuple[set[str], list[dict], list[str]]:
    """The trial cells chosen on validation data, every trial's row, unfinished searches."""
    groups: dict[str, list] = defaultdict(list)
    for cell in study.cells:
        if cell.selects:
            groups[cell.selects].append(cell)
    chosen, trials, unfinished = set(), [], []
    metric = study.settings.select
    for selects, members in groups.items():
        scores = [validation_scores(out / "runs" / c.id) for c in members]
        if any(s is None for s in scores):
            unfinished.append(selects)
            continue
        best = select_trial(scores, metric)  # type: ignore[arg-type]
        chosen.add(members[best].id)
        for k, (c, sc) in enumerate(zip(members, scores)):
            trials.append({"selects_for": selects, "cell": c.id, "label": c.label,
                           "model": c.model, "seed": c.seed,
                           "candidate": ", ".join(f"{k2}={v}" for k2, v in c.trial.items()),
                           **c.trial, **sc, "chosen": k == best})  # type: ignore[dict-item]  # fmt: skip
    return chosen, trials, unfinished


def collect_results(study: StudyConfig, out: Path) -> StudyResults:
    """Read every finished cell's metrics, card and predictions.

    Of a cell with a search space, only the trial chosen on validation data is read (see
    :mod:`.trials`); every trial's validation scores are in ``trials``.
    """
    rows, correct = [], {}
    chosen, trials, missing = _choose_trials(study, out)
    paths: list[str] | None = None
    for cell in study.cells:
        if cell.selects and cell.id not in chosen:
            continue
        run = out / "runs" / cell.id
        if not RunDir(run).finished:
            missing.append(cell.id)
            continue
        scores = RunDir(run).scores()
        m = scores.to_dict()  # the columns below read typed fields; the flags the whole file
        card = load_card(run)
        preds = _read_predictions(run / run_files.PREDICTIONS)
        if not cell.config.holdout_source:  # a cell holding a source out tests on fewer
            paths = paths or sorted(preds)
            correct[cell.id] = np.array([preds[p] for p in paths], dtype=bool)
        low, high = wilson_interval(scores.correct, scores.n)
        row = {
            "cell": cell.id, "group": cell.group, "label": cell.label, "model": cell.model,
            "weights": cell.config.weights, "freeze": cell.config.freeze, "seed": cell.seed,
            "train_size": cell.config.train_size, "train_images": scores.train_images,
            "arm": cell.label.removesuffix(f", {train_size_label(cell.config.train_size)}"),
            "chosen": ", ".join(f"{k}={v}" for k, v in cell.trial.items()),
            "trainable_params": card.freeze.trainable_params,
            "total_params": card.freeze.total_params,
            "epochs_run": scores.epochs_run, "best_epoch": scores.best_epoch,
            "train_seconds": round(float(scores.train_seconds), 2),
            "wall_seconds": round(float(scores.wall_seconds), 2), "n_test": scores.n,
            **{k: getattr(scores, k) for k in (*METRICS, "nll", "loss")},
            "accuracy_ci_low": low, "accuracy_ci_high": high,
            **{f"f1_{c}": v["f1"] for c, v in scores.per_class.items()},
            **_flag_columns(run_flags(run, m)),
            **_holdout_columns(cell.config.holdout_source, run),
            **_source_columns(scores.per_source),
        }  # fmt: skip
        rows.append(row)
    return StudyResults(rows, correct, paths or [], missing, trials)


def _source_columns(by: dict[str, Any] | None) -> dict[str, Any]:
    """A run on several sources (its ``per_source`` scores): each source's balanced
    accuracy, and the worst source."""
    if not by:
        return {}
    return {**{f"source_{name}_balanced_accuracy": m["balanced_accuracy"]
               for name, m in by["sources"].items()}, "worst_source": by["worst"]}  # fmt: skip


def mean_sd(rows: list[dict], key: str) -> str:
    """``key`` over ``rows`` (seeds) as ``mean ± std`` to 3 digits (``-`` where none has it)."""
    values = [float(r[key]) for r in rows if r.get(key) is not None]
    if not values:
        return "-"
    sd = f" ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else ""
    return f"{np.mean(values):.3f}{sd}"


def source_markdown(results: StudyResults) -> list[str]:
    """Balanced accuracy on each source's test images, per training type (mean ± std over
    seeds), and how often each source was a run's worst."""
    cols = sorted({k for r in results.rows for k in r if k.startswith("source_")})
    if not cols:
        return []
    names = [c.removeprefix("source_").removesuffix("_balanced_accuracy") for c in cols]
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in results.rows:
        groups[(r["label"], r["model"])].append(r)
    lines = ["## By source: balanced accuracy on each source's test images", "",
             "| Training type | model | " + " | ".join(names) + " | worst (runs) |",
             "|---|---|" + "---|" * (len(names) + 1)]  # fmt: skip
    for (label, model), rows in groups.items():
        cells = [mean_sd(rows, col) for col in cols]
        worst = Counter(r.get("worst_source") for r in rows if r.get("worst_source"))
        text = ", ".join(f"{k} ({v})" for k, v in worst.most_common())
        lines.append(f"| {label} | {model} | " + " | ".join(cells) + f" | {text} |")
    return [*lines, ""]


def _holdout_columns(source: str | None, run: Path) -> dict[str, Any]:
    """A cell that held a source out: the source, and its scores on that source's own
    validation (what a recipe may be chosen on) and test splits (``holdout.json``)."""
    if not source:
        return {}
    out: dict[str, Any] = {"holdout_source": source}
    path = run / run_files.HOLDOUT
    if path.is_file():
        held = json.loads(path.read_text())
        for split in ("val", "test"):
            m = held.get(split, {})
            out |= {f"holdout_{split}_{k}": m.get(k)
                    for k in ("n", "accuracy", "balanced_accuracy", "nll")}  # fmt: skip
    return out


def _flag_columns(flags: dict[str, str]) -> dict[str, str]:
    return {"flags": " | ".join(flags), "flag_details": " | ".join(flags.values())}


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
            if not metric.endswith(("ece", "ece_calibrated", "_drop")):  # bounded by 0 and 1
                low, high = max(0.0, low), min(1.0, high)
        elif rows[0].get(f"{metric}_ci_low") is not None:  # one run: its Wilson interval
            low, high = rows[0][f"{metric}_ci_low"], rows[0][f"{metric}_ci_high"]
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


def _flag_text(kinds: dict[str, list[int]], n_seeds: int) -> str:
    return "; ".join(f"{kind} in {len(seeds)} of {n_seeds} seed{'s' * (n_seeds != 1)}"
                     for kind, seeds in kinds.items())  # fmt: skip


def compare(
    results: StudyResults, alpha: float = 0.05, n_resamples: int = 2000
) -> list[Comparison]:
    """Every pair of training types within each model and training-set size, on the shared
    test images.

    The accuracy difference is tested with a two-level bootstrap that resamples each
    training type's seeds and the shared test images; p-values are Holm-adjusted over all
    pairs of the study. With fewer than :data:`MIN_SEEDS` seeds per type a comparison is
    "not established". McNemar's exact test for every seed both types ran, and the
    image-only bootstrap, are reported beside it.
    """
    by_arm: dict[tuple[str, str], dict[int, np.ndarray]] = defaultdict(dict)
    flagged: dict[tuple[str, str], dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    size: dict[tuple[str, str], float] = {}
    for r in results.rows:
        if r["cell"] not in results.correct:  # tested on other images (a held-out source)
            continue
        by_arm[(r["model"], r["label"])][r["seed"]] = results.correct[r["cell"]]
        size[(r["model"], r["label"])] = r.get("train_size", 1.0)
        for kind in filter(None, r.get("flags", "").split(" | ")):
            flagged[(r["model"], r["label"])][kind].append(r["seed"])
    raw = []
    models = list(dict.fromkeys(r["model"] for r in results.rows))
    for model in models:
        labels = [lab for (m, lab) in by_arm if m == model]
        for a, b in itertools.combinations(labels, 2):
            if size[(model, a)] != size[(model, b)]:
                continue  # training types are compared on the same amount of data
            runs_a, runs_b = by_arm[(model, a)], by_arm[(model, b)]
            seeds_a, seeds_b = sorted(runs_a), sorted(runs_b)
            ma = np.stack([runs_a[s] for s in seeds_a])  # (seeds, images)
            mb = np.stack([runs_b[s] for s in seeds_b])
            two = two_level_bootstrap(ma, mb, n_resamples=n_resamples)
            _, image_ci, image_p = paired_bootstrap(ma, mb, n_resamples=n_resamples)
            shared = sorted(set(seeds_a) & set(seeds_b))
            raw.append(Comparison(
                model, a, b, two.difference, two.ci, two.p, two.p,
                dict(zip(seeds_a, two.seed_accuracy_a)), dict(zip(seeds_b, two.seed_accuracy_b)),
                {s: mcnemar_exact(runs_a[s], runs_b[s]) for s in shared}, alpha,
                image_ci, image_p, seeds_needed(two, alpha),
                {arm: _flag_text(flagged[(model, arm)], len(by_arm[(model, arm)]))
                 for arm in (a, b) if flagged.get((model, arm))},
            ))  # fmt: skip
    for c, adjusted in zip(raw, holm([c.p for c in raw]) if raw else []):
        c.p_adjusted = adjusted
    return raw


def comparisons_csv(
    comparisons: list[Comparison], external: dict[str, list[Comparison]] | None = None
) -> str:
    """Every comparison as a CSV row; ``test_set`` is ``own`` (the study's test split) or the
    name of the external set it was made on."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "a", "b", "accuracy_difference", "ci_low", "ci_high", "p_two_level",
                "p_holm", "status", "significant", "seeds_a", "seeds_b", "seed_accuracy_a",
                "seed_accuracy_b", "seed_differences", "image_ci_low", "image_ci_high",
                "p_image_only", "mcnemar_by_seed", "seeds_needed", "flags",
                "verdict", "test_set"])  # fmt: skip

    def seeds(values: dict[int, float]) -> str:
        return " ".join(f"s{s}:{v:.4f}" for s, v in values.items())

    tagged = [(c, "own") for c in comparisons]
    tagged += [(c, name) for name, cs in (external or {}).items() for c in cs]
    for c, test_set in tagged:
        mcnemar = " ".join(f"s{s}:{x}/{y}/p={p:.3g}" for s, (x, y, p) in c.mcnemar.items())
        flags = " | ".join(f"{label}: {why}" for label, why in c.flags.items())
        w.writerow([c.model, c.a, c.b, f"{c.difference:.6g}", f"{c.ci[0]:.6g}", f"{c.ci[1]:.6g}",
                    f"{c.p:.6g}", f"{c.p_adjusted:.6g}", c.status, c.significant,
                    len(c.seed_accuracy_a), len(c.seed_accuracy_b), seeds(c.seed_accuracy_a),
                    seeds(c.seed_accuracy_b), seeds(c.seed_differences()),
                    f"{c.image_ci[0]:.6g}", f"{c.image_ci[1]:.6g}", f"{c.image_p:.6g}", mcnemar,
                    "" if c.seeds_needed is None else c.seeds_needed, flags,
                    c.verdict(), test_set])  # fmt: skip
    return buf.getvalue()


def format_stat(s: dict | None, digits: int = 4) -> str:
    """A :func:`summarise` entry as ``mean ± std [low, high]`` (``-`` for none)."""
    if s is None:
        return "-"
    text = f"{s['mean']:.{digits}f}"
    if s["n"] > 1:
        text += f" ± {s['std']:.{digits}f}"
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
                "rows": [[label, *(format_stat(stats.get((label, m))) for m in models)]
                         for label in labels],
            })  # fmt: skip
    return tables


#: How the comparisons were made, in the words the summary and the report both use.
COMPARISON_METHOD = (
    "Each difference is tested with a two-level bootstrap that resamples the seeds of each "
    "training type and the shared test images (paired on images), so its interval and "
    "p-value include run-to-run training noise; the interval uses a t reference with "
    "Welch-Satterthwaite degrees of freedom because a few seeds make percentile intervals too "
    "narrow. p-values are Holm-Bonferroni adjusted across all pairs; the intervals are not, so "
    "an interval that excludes zero can sit beside a non-significant adjusted p. With fewer than "
    f"{MIN_SEEDS} seeds per training type a difference is 'not established'. The image-only "
    "bootstrap (runs held fixed) and McNemar's exact test for each seed pair are in "
    "comparisons.csv."
)
STATUS_MARKDOWN = {"significant": "**significant**", "not significant": "not significant",
              "not established": "*not established*"}  # fmt: skip


def search_markdown(trials: list[dict[str, Any]], metric: str) -> list[str]:
    """The summary's section on hyperparameter search: what each cell chose, per seed."""
    lines = [
        "## Hyperparameter search (chosen on validation data)",
        "",
        f"| cell | seed | chosen | {metric} of each candidate |",
        "|---|---|---|---|",
    ]
    key = lambda t: (t["selects_for"], t["seed"])
    for (cell, seed), members in itertools.groupby(trials, key=key):
        group = list(members)
        best = next(t for t in group if t["chosen"])
        scores = ", ".join(f"{t['candidate']}: {t[metric]:.4f}" for t in group)
        lines.append(f"| {cell} | {seed} | {best['candidate']} | {scores} |")
    lines += ["", "Only the chosen candidate's test metrics enter the tables and comparisons; "
              "every trial is in trials.csv."]  # fmt: skip
    return lines


def failed_runs(results: StudyResults) -> list[tuple[str, str]]:
    """``(cell, reasons)`` of every run flagged as failing to train (see :mod:`.flags`)."""
    return [(r["cell"], r["flag_details"]) for r in results.rows if r.get("flags")]


def seed_advice(comparisons: list[Comparison]) -> str:
    """One paragraph on how many seeds the observed spread would need, or ``""``."""
    few = [c for c in comparisons if not c.established]
    if not few:
        return ""
    least = min(c.seeds for c in few)
    needs = [c.seeds_needed for c in few if c.seeds_needed is not None]
    text = (f"{len(few)} of {len(comparisons)} comparisons are not established: the study "
            f"has {least} seed{'s' * (least != 1)} per training type where at least "
            f"{MIN_SEEDS} are needed to estimate training noise.")  # fmt: skip
    if least < 2:
        return text + f" Run at least {MIN_SEEDS} seeds (--seeds {MIN_SEEDS})."
    reachable = sorted(n for n in needs if n <= 100)
    if len(set(reachable)) == 1:
        text += (f" At the seed spread observed so far, about {reachable[0]} seeds per type "
                 "would settle them (80% power; --seeds N).")  # fmt: skip
    elif reachable:
        text += (f" At the seed spread observed so far, {reachable[0]} seeds per type would "
                 f"settle the clearest of them and {reachable[-1]} the least clear one that "
                 "seeds can settle (80% power; --seeds N).")  # fmt: skip
    return text


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines."""
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]  # fmt: skip


def holdout_markdown(results: StudyResults) -> list[str]:
    """The leave-one-source-out table: each cell that held a source out, in distribution
    and on the source it never saw (mean ± std over seeds)."""
    held = [r for r in results.rows if r.get("holdout_source")]
    if not held:
        return []
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in held:
        groups[(r["label"], r["model"])].append(r)

    lines = ["## Leave one source out", "",
             "| Training type | model | held out | in distribution | held-out val accuracy | "
             "held-out val loss | held-out test accuracy | held-out test balanced accuracy |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for (label, model), rows in groups.items():
        lines.append(
            f"| {label} | {model} | {rows[0]['holdout_source']} | {mean_sd(rows, 'accuracy')} | "
            f"{mean_sd(rows, 'holdout_val_accuracy')} | {mean_sd(rows, 'holdout_val_nll')} | "
            f"{mean_sd(rows, 'holdout_test_accuracy')} | "
            f"{mean_sd(rows, 'holdout_test_balanced_accuracy')} |"
        )
    note = (
        "In distribution: the study's test split without the held-out source's images. "
        "Held out: that source's own split (copies of training and validation images "
        "left out); choose recipes on its validation loss, never on its test split. "
        "These cells are left out of the paired comparisons (other test images)."
    )
    return [*lines, "", note, ""]


def summary_markdown(study: StudyConfig, results: StudyResults,
                     comparisons: list[Comparison],
                     audits: list[str] | None = None,
                     external: list[str] | None = None,
                     split: Split | None = None) -> str:  # fmt: skip
    """The summary page; ``audits`` and ``external`` are the shortcut audit's and the
    external sets' sections (their Markdown lines), ``split`` the study's split (its
    near-copy groups are counted)."""
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
    if split is not None:
        groups, images = split.joined()
        if groups:
            text = (
                f"The split keeps {groups} near-copy group(s) of {images} images (re-saved, "
                "re-sized or re-cropped copies of one radiograph) whole, each in one split."
            )
        elif study.settings.near_copies:
            text = "The split found no near copies to keep together (exact copies always are)."
        else:
            text = "The split keeps exact copies together; near copies were not grouped."
        lines += [text, ""]
    if results.missing:
        lines += [f"**Incomplete:** {len(results.missing)} cell(s) have no results yet: "
                  f"{', '.join(results.missing)}", ""]  # fmt: skip
    for t in summary_tables(results):
        lines += [f"## {t['title']}", "",
                  "| Training type | " + " | ".join(t["models"]) + " |",
                  "|---|" + "---|" * len(t["models"])]  # fmt: skip
        lines += ["| " + " | ".join(row) + " |" for row in t["rows"]]
        lines.append("")
    lines += source_markdown(results)
    lines += holdout_markdown(results)
    if results.trials:
        lines += [*search_markdown(results.trials, study.settings.select), ""]
    failed = failed_runs(results)
    if failed:
        lines += ["## Flagged runs: failed or unstable baselines", ""]
        lines += [f"- **{cell}**: {why}" for cell, why in failed]
        lines += ["", "Every comparison that uses one of these training types carries a caution.",
                  ""]  # fmt: skip
    lines += ["## Paired comparisons (same test images)", ""]
    if comparisons:
        lines += [f"- {STATUS_MARKDOWN[c.status]}: {c.verdict()}" for c in comparisons]
        lines += ["", COMPARISON_METHOD]
        advice = seed_advice(comparisons)
        if advice:
            lines += ["", advice]
    else:
        lines.append("No pairs to compare yet.")
    if external:
        lines += ["", *external]
    if audits:
        lines += ["", *audits]
    return "\n".join(lines) + "\n"
