"""Plain-text summaries of scans and splits, as the CLI prints them."""

from __future__ import annotations

from .scan import ScanReport
from .split import SPLITS, Split

__all__ = ["format_scan_report", "format_split_counts"]


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
    )
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, rows)])


def format_scan_report(report: ScanReport, max_list: int = 20) -> str:
    """A human-readable scan summary: counts, sizes, invalid files, duplicates, conflicts."""
    kind = "COVID-19 Radiography Database layout" if report.known_database else "generic layout"
    counts = report.class_counts()
    rows = [[c, str(n)] for c, n in counts.items()]
    rows.append(["total", str(sum(counts.values()))])
    lines = [f"Dataset: {report.root} ({kind})", "", _table(["class", "images"], rows), ""]
    sizes = report.size_summary()
    if sizes:
        common = ", ".join(f"{k} ({v})" for k, v in sizes["most_common"].items())
        w, h = sizes["width"], sizes["height"]
        lines.append(
            f"Sizes: width {w['min']}..{w['max']} (median {w['median']:g}), "
            f"height {h['min']}..{h['max']} (median {h['median']:g}); "
            f"most common: {common}"
        )
    if report.empty_classes:
        lines.append(f"Empty classes (no valid images): {', '.join(report.empty_classes)}")
    lines.append(f"Invalid files: {len(report.invalid)}")
    lines += [f"  {i.path}: {i.reason}" for i in report.invalid[:max_list]]
    n_dup = sum(len(g) for g in report.duplicates)
    lines.append(f"Duplicate groups: {len(report.duplicates)} ({n_dup} files, kept in one split)")
    lines += [f"  {' == '.join(g)}" for g in report.duplicates[:max_list]]
    lines.append(f"Label conflicts: {len(report.conflicts)} (left out)")
    lines += [
        f"  {' / '.join(c['classes'])}: {' == '.join(c['paths'])}"
        for c in report.conflicts[:max_list]
    ]
    hidden = max(0, len(report.invalid) - max_list) + max(0, len(report.duplicates) - max_list)
    if hidden:
        lines.append(f"  ... {hidden} more not shown; use --json for the full lists")
    lines += _sources_lines(report)
    lines.append(f"Data hash: {report.fingerprint()}")
    return "\n".join(lines)


def _sources_lines(report: ScanReport) -> list[str]:
    """The class x source table, and what in it lets a model learn the source for the class."""
    summary = report.source_summary()
    if summary is None:
        return []
    table = summary["images"]
    names = sorted({s for row in table.values() for s in row})
    rows = [[c, *(str(table[c][s]) for s in names)] for c in table]
    lines = ["", "Images by class and source:", _table(["class", *names], rows)]
    if summary["confounds"]:
        lines.append("Confounds (a model can learn the source instead of the class):")
        lines += [f"  {c}" for c in summary["confounds"]]
    else:
        lines.append("No class comes from one source alone.")
    lines.append(f"Exact copies across sources: {summary['copies_across']} image(s) "
                 "(training keeps copies, and near copies, in one split)")  # fmt: skip
    return [*lines, ""]


def format_split_counts(split: Split) -> str:
    """A class x split table of image counts."""
    counts = split.counts()
    rows = [[c, *(str(counts[s][c]) for s in SPLITS)] for c in split.classes]
    rows.append(["total", *(str(sum(counts[s].values())) for s in SPLITS)])
    text = _table(["class", *SPLITS], rows)
    groups, images = split.joined()
    if split.groups or groups:
        text += (f"\nNear copies: {groups} group(s) of {images} images joined, each kept in one "
                 "split (the manifest's group column)")  # fmt: skip
    who = split.patient_summary()
    if who["patients"]:
        text += (f"\nPatients: {who['images']} images of {who['patients']} known patients; "
                 f"{who['grouped_patients']} with several images ({who['grouped_images']} "
                 "images), each patient in one split (the manifest's patient column)")  # fmt: skip
        if who["across"]:
            text += f"; {who['across']} patients span splits (the dataset's own split)"
    return text
