"""Writing a feature-reuse analysis: ``reuse.json``, ``reuse_units.csv``, ``reuse.md``,
figures."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from typing import Any

import numpy as np

from ..utils import WHY_NULL, atomic_write_text, write_json
from .result import ReuseResult
from .reuse_figures import plot_by_size, plot_cka_pairs, plot_units

__all__ = ["reuse_markdown", "write_reuse"]

FIGURES = {
    "units": "reuse_units.png",
    "pairs": "cka_pairs.png",
    "by_size": "accuracy_by_size.png",
}


def write_reuse(result: ReuseResult, **context: Any) -> None:
    """Write every output of :func:`~cxrlab.analysis.analyze_reuse` into ``result.out``."""
    out = result.out
    figures = {}
    if plot_units(result.table, out / FIGURES["units"]):
        figures["units"] = FIGURES["units"]
    if plot_cka_pairs(result.pairs, out / FIGURES["pairs"]):
        figures["pairs"] = FIGURES["pairs"]
    if plot_by_size(result.runs, out / FIGURES["by_size"]):
        figures["by_size"] = FIGURES["by_size"]
    write_json(
        out / "reuse.json",
        {
            "context": context,
            "runs": result.runs,
            "summary": result.summary,
            "units": result.table,
            "pairs": result.pairs,
            "notes": result.notes,
            "figures": figures,
        },
    )
    buf = io.StringIO()
    if result.table:
        fields = [k for k in result.table[0] if k != WHY_NULL]  # reasons: reuse.json
        w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        for row in result.table:
            w.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    atomic_write_text(out / "reuse_units.csv", buf.getvalue())
    atomic_write_text(out / "reuse.md", reuse_markdown(result, figures, **context))


def _pct(v: float | None) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.1f}"


def _ci(ci: list[float] | None) -> str:
    return "" if not ci else f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"


def _size(size: float) -> str:
    return f"{size:.0%}" if size <= 1 else f"{size:g}/class"


def unit_digest(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model, initialisation, freezing and size: the per-unit measurements in a few
    numbers (means over seeds)."""
    groups: dict[tuple, dict[int, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in table:
        groups[(r["model"], r["init"], r["freeze"], r["train_size"])][r["unit_index"]].append(r)
    out = []
    for (model, kind, freeze, size), by_unit in sorted(groups.items()):
        units = sorted(by_unit)
        names = [by_unit[u][0]["unit"] for u in units]

        def mean(key: str, rows: list[dict[str, Any]]) -> float:
            vals = [r[key] for r in rows if np.isfinite(r[key])]
            return float(np.mean(vals)) if vals else float("nan")

        cka = [mean("cka_to_init", by_unit[u]) for u in units]
        change = [mean("weight_change", by_unit[u]) for u in units]
        reset = [mean("reset_to_init_accuracy", by_unit[u]) for u in units]
        knn = [mean("knn_accuracy", by_unit[u]) for u in units]
        acc = mean("accuracy", by_unit[units[0]])
        moved = [c if np.isfinite(c) else -1.0 for c in change]
        drops = [acc - r if np.isfinite(r) else -1.0 for r in reset]
        row = {
            "model": model,
            "init": kind,
            "freeze": freeze,
            "train_size": size,
            "units": len(units),
            "accuracy": acc,
            "cka_stem": cka[0],
            "cka_last": cka[-1],
            "units_cka_above_0.9": int(sum(c >= 0.9 for c in cka if np.isfinite(c))),
            # None where no unit moved / no reset costs anything (a frozen backbone)
            "largest_change_unit": names[int(np.argmax(moved))] if max(moved) > 0 else None,
            "largest_change": max(moved) if max(moved) > 0 else None,
            "critical_unit": names[int(np.argmax(drops))] if max(drops) > 0 else None,
            "critical_drop": max(drops) if max(drops) > 0 else None,
            "best_knn_unit": names[int(np.nanargmax(knn))],
            "best_knn": float(np.nanmax(knn)),
            "knn_last": knn[-1],
        }
        out.append(row)
    return out


def _summary_markdown(summary: list[dict[str, Any]]) -> list[str]:
    """What pretraining adds, and the share of it statistics transfer recovers."""
    lines: list[str] = []
    summary = [s for s in summary if any(f"{k}_accuracy" in s for k in ("WT", "ST", "RI"))]
    if summary:
        lines += [
            "## What pretraining adds, and how much of it the weight statistics alone give",
            "",
            "Test accuracy (%) per initialisation, mean over seeds (n seeds); the gain of WT "
            "over RI with a 95 % bootstrap interval over seeds, and the share of that gain "
            "that ST recovers, (ST - RI) / (WT - RI).",
            "",
            "| model | freeze | training data | WT | ST | RI | gain WT - RI (points) "
            "| ST share of the gain |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for s in summary:
            cells = []
            for kind in ("WT", "ST", "RI"):
                acc = s.get(f"{kind}_accuracy")
                cells.append("-" if acc is None else f"{_pct(acc)} ({s[f'{kind}_seeds']})")
            gain = "-" if "gain" not in s else f"{100 * s['gain']:+.1f}{_ci(s['gain_ci'])}"
            share = s.get("st_share")
            share_ci = s.get("st_share_ci")
            share_txt = (
                "-"
                if share is None
                else f"{share:.2f}"
                + (f" [{share_ci[0]:.2f}, {share_ci[1]:.2f}]" if share_ci else "")
            )
            lines.append(
                f"| {s['model']} | {s['freeze']} | {_size(s['train_size'])} | "
                + " | ".join(cells)
                + f" | {gain} | {share_txt} |"
            )
        lines += [
            "",
            "A share is only meaningful where the gain's interval lies clearly above zero; "
            "with few seeds the intervals are wide (the seeds are the runs' only "
            "replication).",
            "",
        ]
    return lines


def _xray_markdown(summary: list[dict[str, Any]]) -> list[str]:
    """What X-ray pretraining adds to ImageNet weights (XR-WT - WT) and to none (XR-RI - RI)."""
    rows = [s for s in summary if "xr_wt_gain" in s or "xr_ri_gain" in s]
    if not rows:
        return []
    lines = [
        "## What X-ray pretraining adds",
        "",
        "Test accuracy (%) per initialisation, mean over seeds (n seeds); the difference X-ray "
        "pretraining makes, with a 95 % bootstrap interval over seeds: continued from ImageNet "
        "against ImageNet alone (XR-WT - WT), and from scratch against no pretraining "
        "(XR-RI - RI).",
        "",
        "| model | freeze | training data | WT | XR-WT | RI | XR-RI | XR-WT - WT (points) "
        "| XR-RI - RI (points) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in rows:
        cells = []
        for kind in ("WT", "XR-WT", "RI", "XR-RI"):
            acc = s.get(f"{kind}_accuracy")
            cells.append("-" if acc is None else f"{_pct(acc)} ({s[f'{kind}_seeds']})")
        for key in ("xr_wt_gain", "xr_ri_gain"):
            cells.append("-" if key not in s else f"{100 * s[key]:+.1f}{_ci(s[f'{key}_ci'])}")
        lines.append(f"| {s['model']} | {s['freeze']} | {_size(s['train_size'])} | "
                     + " | ".join(cells) + " |")  # fmt: skip
    return [*lines, ""]


def _units_markdown(table: list[dict[str, Any]]) -> list[str]:
    """Per unit, in a few numbers: CKA to the start, change, criticality, k-NN."""
    lines: list[str] = []
    digest = unit_digest(table)
    if digest:
        lines += [
            "## Per unit, in a few numbers",
            "",
            "CKA of each unit's output to the same unit of the weights it started from (1 = "
            "unchanged representation); the unit whose weights moved most (relative L2); the "
            "unit whose reset to its initial weights costs the most accuracy; the unit whose "
            "pooled output a k-NN classifies best.",
            "",
            "| model | init | freeze | data | accuracy | CKA stem / last | units CKA >= 0.9 "
            "| most changed | most critical (drop) | best k-NN unit (acc) | k-NN last |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for d in digest:
            crit = (
                f"{d['critical_unit']} ({100 * d['critical_drop']:.1f} pts)"
                if d["critical_unit"]
                else "none"
            )
            changed = (
                f"{d['largest_change_unit']} ({d['largest_change']:.2f})"
                if d["largest_change_unit"]
                else "none"
            )
            lines.append(
                f"| {d['model']} | {d['init']} | {d['freeze']} | {_size(d['train_size'])} | "
                f"{_pct(d['accuracy'])} | {d['cka_stem']:.2f} / {d['cka_last']:.2f} | "
                f"{d['units_cka_above_0.9']} of {d['units']} | {changed} | {crit} | "
                f"{d['best_knn_unit']} ({_pct(d['best_knn'])}) | {_pct(d['knn_last'])} |"
            )
        lines.append("")
    return lines


def reuse_markdown(result: ReuseResult, figures: dict[str, str], **context: Any) -> str:
    """The analysis in words and tables."""
    lines = [
        "# Feature reuse: why pretraining helps",
        "",
        f"{len(result.runs)} run(s), measured on {context.get('n_images', '?')} "
        f"{context.get('split', 'test')} images (the same for every model); k-NN bank: "
        f"{context.get('bank', '?')} training images, k = {context.get('k', '?')}. "
        "WT = ImageNet weights, ST = statistics transfer (each tensor redrawn from the "
        "pretrained tensor's mean and std), RI = random init, TF<K> = first K units "
        "pretrained, XR-WT / XR-RI = a 'cxrlab pretrain' backbone (X-ray self-supervised "
        "pretraining continued from ImageNet / from scratch).",
        "",
    ]
    lines += (_summary_markdown(result.summary) + _xray_markdown(result.summary)
              + _units_markdown(result.table))  # fmt: skip
    if result.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in result.notes] + [""]
    captions = {
        "units": "Per-unit measurements (mean over seeds; band: min to max)",
        "pairs": "CKA between models that differ only in their initialisation",
        "by_size": "Test accuracy against the number of training images",
    }
    for key, name in figures.items():
        lines += [f"![{captions[key]}]({name})", ""]
    lines += ["Every number per run and unit: `reuse_units.csv`; all of it: `reuse.json`."]
    return "\n".join(lines) + "\n"
