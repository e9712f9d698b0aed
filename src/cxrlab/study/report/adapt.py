"""The ``[[study.adapt]]`` results: each cell adapted to a site, beside the unadapted run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ... import run_files
from ..study_config import ADAPTED_DIR, AdaptSettings, StudyConfig
from .results import StudyResults, markdown_table, mean_sd

__all__ = ["ADAPT_METRICS", "adapt_markdown", "adapt_tables", "collect_adapt"]

#: What each adapted run is scored by, on the site's test part (``adaptation.json``).
ADAPT_METRICS = ("accuracy", "macro_f1", "ece")


def _records(out: Path, cell: str, spec: AdaptSettings, n: int) -> list[dict[str, Any]]:
    """The site test scores of the cell's adapted runs with ``n`` labels, one per draw."""
    found = []
    for labels, _, name in spec.runs():
        path = out / ADAPTED_DIR / cell / name / run_files.ADAPTATION
        if labels == n and path.is_file():
            rec = json.loads(path.read_text())["site_test"]
            if rec["before"] and rec["after"]:
                found.append(rec)
    return found


def collect_adapt(study: StudyConfig, out: Path, results: StudyResults) -> None:
    """Add the ``adapt_<site>_*`` columns to ``results.rows``: the site's test part scored
    before adaptation, and after it with each N labelled images per class (mean over the
    draws)."""
    for spec in study.settings.adapt:
        for row in results.rows:
            for n in spec.labels:
                recs = _records(out, row["cell"], spec, n)
                if not recs:
                    continue
                before = recs[0]["before"]
                row[f"adapt_{spec.site}_n_test"] = before["n"]
                for m in ADAPT_METRICS:
                    row[f"adapt_{spec.site}_before_{m}"] = before[m]
                    row[f"adapt_{spec.site}_n{n}_{m}"] = float(
                        np.mean([r["after"][m] for r in recs])
                    )
                row[f"adapt_{spec.site}_n{n}_draws"] = len(recs)


#: One site's section: title, what was done, table header, table rows.
AdaptTable = tuple[str, str, list[str], list[list[str]]]


def adapt_tables(study: StudyConfig, results: StudyResults) -> list[AdaptTable]:
    """Per site: a title, what was done, and a table of each training type's accuracy on
    the site's test part before adaptation and after it with each N (mean ± std over
    seeds)."""
    out = []
    for spec in study.settings.adapt:
        key = f"adapt_{spec.site}_before_accuracy"
        rows = [r for r in results.rows if key in r]
        if not rows:
            continue
        header = ["training", "site test images", "before",
                  *(f"N = {n}" for n in spec.labels)]  # fmt: skip
        body = []
        for arm in dict.fromkeys(r["label"] for r in rows):
            mine = [r for r in rows if r["label"] == arm]
            body.append([arm, str(mine[0][f"adapt_{spec.site}_n_test"]), mean_sd(mine, key),
                         *(mean_sd(mine, f"adapt_{spec.site}_n{n}_accuracy")
                           for n in spec.labels)])  # fmt: skip
        text = (f"cxrlab adapt with the site's images (method {spec.method}; N labelled "
                f"images per class, {spec.draws} draw(s) of them): accuracy on the "
                f"{spec.test_share:.0%} of the site adaptation never read (split seed "
                f"{spec.split_seed}), mean ± std over seeds. Every column is in results.csv "
                f"(adapt_{spec.site}_*, with macro-F1 and ECE).")  # fmt: skip
        out.append((f"Adapted to {spec.site}", text, header, body))
    return out


def adapt_markdown(study: StudyConfig, results: StudyResults) -> list[str]:
    """:func:`adapt_tables` as Markdown sections."""
    lines: list[str] = []
    for title, text, header, body in adapt_tables(study, results):
        lines += ["", f"## {title}", "", text, "", *markdown_table(header, body)]
    return lines
