"""The study report: tables, statistics, figures and an HTML page, rebuilt from disk."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ... import run_files
from ...analysis.reuse_figures import plot_by_size
from ...data.split import load_split
from ...runs.ensemble import read_ensemble
from ...utils import atomic_write_text
from ..study_config import FINAL_DIR, StudyConfig, load_study_folder
from .adapt import adapt_markdown, collect_adapt
from .audits import StudyAudits, audit_markdown, collect_audits
from .external_tables import (
    ExternalResults,
    collect_external,
    external_comparisons,
    external_markdown,
    plot_routing,
)
from .html import render_html
from .results import (
    Comparison,
    StudyResults,
    collect_results,
    compare,
    comparisons_csv,
    results_csv,
    summary_markdown,
)
from .reuse import reuse_sections
from .study_figures import plot_accuracy_intervals, plot_comparisons, plot_feature_maps
from .trials import plot_trials, trials_csv

__all__ = ["Report", "build_report"]


@dataclass(frozen=True)
class Report:
    results: StudyResults
    comparisons: list[Comparison]
    files: dict[str, Path]
    audits: StudyAudits
    externals: list[ExternalResults] = field(default_factory=list)
    external_comparisons: dict[str, list[Comparison]] = field(default_factory=dict)


def build_report(study_dir: str | os.PathLike[str], study: StudyConfig | None = None) -> Report:
    """(Re)build ``results.csv``, ``summary.md``, ``comparisons.csv``, figures and
    ``report.html`` from the finished runs in ``study_dir``.

    Works at any time: cells without results are listed as missing.
    """
    study_dir = Path(study_dir)
    if study is None:
        study = load_study_folder(study_dir)
    results = collect_results(study, study_dir)
    comparisons = compare(results, study.settings.alpha, study.settings.bootstrap)
    externals = collect_external(study, study_dir, results)  # adds their results.csv columns
    collect_adapt(study, study_dir, results)  # and the adapted runs'
    external_cmp = {e.name: external_comparisons(e, study.settings.alpha,
                                                 study.settings.bootstrap)
                    for e in externals}  # fmt: skip
    fig_dir = study_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    figures: dict[str, Path] = {}
    if (p := plot_accuracy_intervals(results, fig_dir / "accuracy.png")) is not None:
        figures["accuracy"] = p
    if (p := plot_comparisons(comparisons, fig_dir / "comparisons.png")) is not None:
        figures["comparison_plot"] = p
    for p in plot_feature_maps(study, results, fig_dir, study_dir):
        figures[p.stem] = p
    if p := plot_trials(results.trials, study.settings.select, fig_dir / "trials.png"):
        figures["trials_plot"] = p
    for e in externals:
        if p := plot_routing(e, fig_dir / f"external_{e.name}_routing.png"):
            figures[f"external_{e.name}_routing"] = p
    if len({r["train_size"] for r in results.rows}) > 1:  # the data-size axis
        multi = len({r["model"] for r in results.rows}) > 1
        lines = [r | {"line": f"{r['model']}: {r['arm']}" if multi else r["arm"]}
                 for r in results.rows]  # fmt: skip
        for metric in ("accuracy", "macro_f1"):
            path = fig_dir / f"by_size_{metric}.png"
            label = {"accuracy": "test accuracy", "macro_f1": "test macro-F1"}[metric]
            if plot_by_size(lines, path, metric=metric, line="line", ylabel=label):
                figures[f"by_size_{metric}"] = path
    files = {
        "results": study_dir / "results.csv",
        "summary": study_dir / "summary.md",
        "comparisons": study_dir / "comparisons.csv",
        "report": study_dir / "report.html",
    }
    atomic_write_text(files["results"], results_csv(results))
    audits = collect_audits(study_dir, results)
    if not results.missing and study.settings.final != "none" and (study_dir / FINAL_DIR).is_dir():
        files["final"] = study_dir / FINAL_DIR  # chosen by the runner (or 'cxrlab study final')
    split = (
        load_split(study_dir / run_files.SPLIT) if (study_dir / run_files.SPLIT).is_file() else None
    )
    audit_lines = audit_markdown(audits) if audits else None
    summary = summary_markdown(study, results, comparisons, audit_lines,
                               external_markdown(externals, external_cmp), split)  # fmt: skip
    if adapted := adapt_markdown(study, results):
        summary += "\n".join(adapted) + "\n"
    if "final" in files:
        final = read_ensemble(files["final"])
        summary += (f"\n## Final model\n\n`final/` (predict, evaluate, export, serve accept it):"
                    f" {final.description}.\n")  # fmt: skip
    for title, lines in reuse_sections(study_dir)[:1]:  # the transfer summary
        summary += (
            f"\n## Feature reuse: {title}\n"
            + "\n".join(lines)
            + ("\nPer-unit measurements and figures: `analysis/reuse.md`.\n")
        )
    atomic_write_text(files["summary"], summary)
    atomic_write_text(files["comparisons"], comparisons_csv(comparisons, external_cmp))
    if results.trials:
        files["trials"] = study_dir / "trials.csv"
        atomic_write_text(files["trials"], trials_csv(results.trials))
    page = render_html(study, results, comparisons, study_dir, figures, audits,
                       (externals, external_cmp))  # fmt: skip
    atomic_write_text(files["report"], page)
    return Report(results, comparisons, files | figures, audits, externals, external_cmp)
