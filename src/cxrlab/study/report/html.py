"""``report.html``: one self-contained page (figures embedded as data URIs)."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from ... import run_files
from ...runs.card import RunCard
from ...runs.folder import load_card
from ..study_config import StudyConfig
from .adapt import adapt_tables
from .audits import AUDIT_HEADER, StudyAudits, audit_rows
from .external_tables import ExternalResults, external_markdown, external_table
from .results import (
    COMPARISON_METHOD,
    Comparison,
    StudyResults,
    failed_runs,
    holdout_markdown,
    search_markdown,
    seed_advice,
    source_markdown,
    summary_tables,
)
from .reuse import ANALYSIS_DIR, read_reuse, reuse_sections

__all__ = ["render_html"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1100px;color:#1b1f23;line-height:1.45;padding:0 1rem}
h1{margin-bottom:.2rem}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.6rem 0 1.2rem;font-size:.9rem}
th,td{border:1px solid #d0d7de;padding:.3rem .6rem;text-align:left}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
.sig{color:#116329;font-weight:600}.ns{color:#57606a}.ne{color:#9a6700;font-weight:600}
figure{display:inline-block;margin:.4rem;vertical-align:top;text-align:center}
figure img{max-width:480px;border:1px solid #d0d7de}figcaption{font-size:.8rem;color:#57606a}
pre{background:#f6f8fa;padding:.8rem;overflow-x:auto;font-size:.8rem}
.muted{color:#57606a;font-size:.85rem}figure.wide img{max-width:100%}
"""


def _img(path: Path, caption: str, wide: bool = False) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    cls = ' class="wide"' if wide else ""
    return (
        f'<figure{cls}><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)

    def cell(i: int, c: Any) -> str:
        return (
            f'<td class="num">{html.escape(str(c))}</td>'
            if i
            else f"<td>{html.escape(str(c))}</td>"
        )

    body = "".join(
        "<tr>" + "".join(cell(i, c) for i, c in enumerate(row)) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(
    study: StudyConfig,
    results: StudyResults,
    comparisons: list[Comparison],
    study_dir: Path,
    figures: dict[str, Path],
    audits: StudyAudits | None = None,
    external: tuple[list[ExternalResults], dict[str, list[Comparison]]] | None = None,
) -> str:
    """The report page: tables, verdicts, external sets, figures, configuration, hashes and
    versions."""
    s = study.settings
    parts = [f"<h1>cxrlab study: {html.escape(s.name)}</h1>"]
    if s.description:
        parts.append(f"<p>{html.escape(s.description)}</p>")
    seeds = sorted({r["seed"] for r in results.rows})
    parts.append(
        f'<p class="muted">{len(results.rows)} runs of {len(study.cells)} cells; '
        f"{len(seeds)} seed(s); {len(results.paths)} shared test images.</p>"
    )
    if results.missing:
        parts.append(
            f"<p><strong>Incomplete:</strong> no results yet for "
            f"{html.escape(', '.join(results.missing))}.</p>"
        )
    parts.append(
        "<h2>Summary tables</h2><p class='muted'>mean ± std over seeds [95 % "
        "interval: Student t over seeds, or Wilson over test images for one seed]</p>"
    )
    for t in summary_tables(results):
        parts.append(f"<h3>{html.escape(t['title'])}</h3>")
        parts.append(_table(["Training type", *t["models"]], t["rows"]))
    if by_source := source_markdown(results):
        parts.append("<h2>By source</h2>")
        parts.append(_markdown_table(by_source))
    if holdout := holdout_markdown(results):
        parts.append("<h2>Leave one source out</h2>")
        parts.append(_markdown_table(holdout))
    if results.trials:
        parts.append("<h2>Hyperparameter search</h2>")
        parts.append(_markdown_table(search_markdown(results.trials, study.settings.select)))
        if "trials_plot" in figures:
            parts.append(_img(figures["trials_plot"], "validation score per candidate", wide=True))
    if failed := failed_runs(results):
        parts.append("<h2>Flagged runs: failed or unstable baselines</h2><ul>")
        parts += [f"<li><b>{html.escape(c)}</b>: {html.escape(w)}</li>" for c, w in failed]
        parts.append("</ul><p class='muted'>Every comparison that uses one of these training "
                     "types carries a caution.</p>")  # fmt: skip
    parts += _comparisons_section(comparisons, figures)
    if external and external[0]:
        parts += _external_section(*external, figures)
    for title, text, header, body in adapt_tables(study, results):
        parts += [f"<h2>{html.escape(title)}</h2>", f"<p>{html.escape(text)}</p>",
                  _table(header, body)]  # fmt: skip
    if audits:
        parts += _audit_section(audits)
    parts += _reuse_section(study_dir)
    parts.append("<h2>Figures</h2>")
    for key, caption in (
        ("accuracy", "Test accuracy with 95 % intervals"),
        ("by_size_accuracy", "Test accuracy against the number of training images"),
        ("by_size_macro_f1", "Test macro-F1 against the number of training images"),
        ("features_pretrained", "First-stage feature maps: pretrained"),
        ("features_non_pretrained", "First-stage feature maps: not pretrained"),
    ):
        if key in figures:
            parts.append(_img(figures[key], caption))
    parts += _runs_section(study, results, study_dir)
    body = "\n".join(parts)
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>cxrlab: "
        f"{html.escape(s.name)}</title><style>{_CSS}</style></head><body>{body}"
        "</body></html>\n"
    )


def _comparisons_section(comparisons: list[Comparison], figures: dict[str, Path]) -> list[str]:
    """The paired comparisons' verdicts, the method and the comparison figure."""
    parts: list[str] = []
    parts.append("<h2>Which differences are real?</h2><ul>")
    for c in comparisons:
        cls = {"significant": "sig", "not significant": "ns", "not established": "ne"}[c.status]
        parts.append(f'<li><span class="{cls}">{c.status}</span>: {html.escape(c.verdict())}</li>')
    parts.append(f"</ul><p class='muted'>{html.escape(COMPARISON_METHOD)}</p>")
    if advice := seed_advice(comparisons):
        parts.append(f"<p>{html.escape(advice)}</p>")
    if "comparison_plot" in figures:
        parts.append(
            _img(
                figures["comparison_plot"],
                "Each comparison: interval over seeds and "
                "images, image-only interval, and the seed-level differences",
            )
        )
    return parts


def _runs_section(study: StudyConfig, results: StudyResults, study_dir: Path) -> list[str]:
    """Every run's curves and confusion matrix, the results table, the configuration and
    the provenance (hashes, versions)."""
    parts: list[str] = []
    parts.append("<h2>Every run</h2>")
    for r in results.rows:
        run = study_dir / "runs" / r["cell"]
        parts.append(
            f"<h3>{html.escape(r['cell'])}</h3><p class='muted'>"
            f"{html.escape(r['label'])}; test accuracy {r['accuracy']:.4f}; "
            f"{r['trainable_params']:,} of {r['total_params']:,} parameters trained; "
            f"training loop {r['train_seconds']} s, whole run {r['wall_seconds']} s</p>"
        )
        parts.append(_img(run / run_files.LOSS_FIGURE, "loss over epochs (train vs validation)"))
        parts.append(_img(run / run_files.CONFUSION_FIGURE, "confusion matrix (test)"))
    cols = ["cell", "accuracy", "balanced_accuracy", "macro_f1", "auroc", "ece",
            "trainable_params", "train_seconds", "wall_seconds"]  # fmt: skip
    parts.append("<h2>Results table</h2>")
    parts.append(_table(cols, [[(f"{r[c]:.4f}" if isinstance(r[c], float) else r[c])
                                for c in cols] for r in results.rows]))  # fmt: skip
    parts.append("<h2>Configuration and provenance</h2>")
    parts.append(f"<pre>{html.escape(study.source)}</pre>")
    card = _first_card(study_dir, results)
    if card:
        parts.append(_table(["", ""], [
            ["data root", card.data.root], ["data hash", card.data.data_hash],
            ["split hash", card.data.split_hash],
            ["split seed / ratios", f"{card.data.split_seed} / {list(card.data.ratios)}"],
            *[[k, v] for k, v in card.versions.items()],
        ]))  # fmt: skip
    return parts


def _external_section(externals: list[ExternalResults], comparisons: dict[str, list[Comparison]],
                      figures: dict[str, Path]) -> list[str]:  # fmt: skip
    parts = ["<h2>External sets: does it hold up elsewhere?</h2>"]
    for e in externals:
        parts.append(f"<h3>{html.escape(e.name)}</h3>")
        lines = external_markdown([e], comparisons)
        notes = [ln for ln in lines if ln and not ln.startswith(("|", "#", "- ", "Paired"))]
        plain = [n.replace("`", "").replace("**", "") for n in notes]  # Markdown marks
        parts += [f"<p>{html.escape(n)}</p>" for n in plain[:1]]
        header, rows = external_table(e)
        if rows:
            parts.append(_table(header, rows))
            parts += [f"<p class='muted'>{html.escape(n)}</p>" for n in plain[1:]]
        if e.errors:
            parts.append("<ul>" + "".join(f"<li>not scored: <b>{html.escape(c)}</b>: "
                                          f"{html.escape(w)}</li>"
                                          for c, w in e.errors.items()) + "</ul>")  # fmt: skip
        key = f"external_{e.name}_routing"
        if key in figures:
            parts.append(_img(figures[key], f"{e.name}: where each class went", wide=True))
        if cmp := comparisons.get(e.name):
            parts.append(f"<p>Paired comparisons on {html.escape(e.name)} "
                         f"({len(e.results.paths)} images):</p><ul>")  # fmt: skip
            for c in cmp:
                cls = {"significant": "sig", "not significant": "ns",
                       "not established": "ne"}[c.status]  # fmt: skip
                parts.append(f'<li><span class="{cls}">{c.status}</span>: '
                             f"{html.escape(c.verdict() + e.flag())}</li>")  # fmt: skip
            parts.append("</ul>")
    return parts


def _audit_section(audits: StudyAudits) -> list[str]:
    parts = ["<h2>Shortcut audit</h2>"]
    rows = audit_rows(audits)
    if rows:
        parts.append(_table(AUDIT_HEADER, rows))
        parts.append(
            "<p class='muted'>Accuracy on the same test images as they are, with the lungs "
            "filled (mean of the rest of the image) and with everything outside the lungs "
            "filled; 'kept above chance' is the share of the above-chance accuracy left without "
            "the lungs.</p>"
        )
    for cell, a in audits.cells.items():
        folder = audits.folder[cell]
        findings = [(k, v.get("finding") or f"skipped: {v.get('skipped', '')}")
                    for k, v in a.get("checks", {}).items()]  # fmt: skip
        parts.append(f"<h3>{html.escape(cell)}</h3><ul>")
        parts += [f"<li><b>{html.escape(k)}</b>: {html.escape(f)}</li>" for k, f in findings]
        parts.append("</ul>")
        parts.append(_img(folder / "lungs.png", "accuracy with and without the lungs"))
        parts.append(_img(folder / "cam_shares.png", "Grad-CAM mass inside the lungs"))
    probes = (audits.data or {}).get("checks", {}).get("probes", {})
    if probes:
        text = probes.get("finding") or f"Acquisition probes skipped: {probes.get('skipped')}"
        parts.append(f"<h3>The data</h3><p>{html.escape(text)}</p>")
        parts.append(_img(audits.folder["data"] / "probes.png", "acquisition probes"))
    return parts


def _reuse_section(study_dir: Path) -> list[str]:
    """The ``[analysis]`` feature-reuse tables and figures, when the analysis has run."""
    info = read_reuse(study_dir)
    if info is None:
        return []
    parts = ["<h2>Feature reuse: why pretraining helps</h2>"]
    for title, lines in reuse_sections(study_dir):
        parts.append(f"<h3>{html.escape(title)}</h3>")
        if any(ln.startswith("|") for ln in lines):
            parts.append(_markdown_table(lines))
        else:
            parts += [f"<p>{html.escape(ln.removeprefix('- '))}</p>" for ln in lines if ln]
    captions = {"units": "Per unit: CKA to the initialisation, weight change, re-initialisation, "
                "k-NN probe (mean over seeds; band: min to max)",
                "pairs": "CKA between models that differ only in their initialisation",
                "by_size": "Test accuracy against the number of training images"}  # fmt: skip
    for key, name in info.get("figures", {}).items():
        if key != "by_size":  # the report shows its own data-size figure
            parts.append(_img(study_dir / ANALYSIS_DIR / name, captions[key], wide=True))
    return parts


def _markdown_table(lines: list[str]) -> str:
    """The first Markdown table in ``lines`` as HTML, the text after it as a note."""
    rows = [ln for ln in lines if ln.startswith("|")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in rows if "---" not in ln]
    notes = [ln for ln in lines if ln and not ln.startswith(("|", "#"))]
    note = "".join(f"<p class='muted'>{html.escape(n)}</p>" for n in notes)
    return (_table(cells[0], cells[1:]) if cells else "") + note


def _first_card(study_dir: Path, results: StudyResults) -> RunCard | None:
    for r in results.rows:
        run = study_dir / "runs" / r["cell"]
        if (run / run_files.CARD).exists():
            return load_card(run)
    return None
