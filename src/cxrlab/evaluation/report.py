"""Plain-text summaries of evaluation results, as the CLI prints them."""

from __future__ import annotations

from typing import Any

__all__ = ["format_evaluation", "format_routing"]


def format_routing(routing: dict[str, dict[str, int]], matching: dict[str, str | None]) -> str:
    """A dataset class x model class table of where the images went (share and count)."""
    if not routing:
        return ""
    model_classes = list(next(iter(routing.values())))
    head = ["dataset class (-> scored as)", *model_classes]
    rows = []
    for label, row in routing.items():
        n = sum(row.values())
        target = matching.get(label)
        name = f"{label} (-> {target})" if target not in (None, label) else label
        if target is None:
            name += " (unscored)"
        rows.append([name, *(f"{v / n:.0%} ({v})" if n else "-" for v in row.values())])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))
    return "\n".join([fmt(head), *map(fmt, rows)])


def format_evaluation(m: dict[str, Any]) -> str:
    """Overlap with the training data first, then the metrics, then where images went."""
    lines = []
    if m.get("members"):
        lines.append(f"Ensemble of {len(m['members'])} runs (their probabilities averaged)")
    if "overlap" in m:
        lines.append(m["overlap"]["summary"])
        if m.get("excluded_copies"):
            lines.append(
                f"{m['excluded_copies']} image(s) that copy training or validation images are "
                "left out of the numbers below (--keep-copies to score them)"
            )
        if m.get("excluded_patients"):
            lines.append(
                f"{m['excluded_patients']} other image(s) of patients the run trained or "
                "validated on are left out too (--keep-copies to score them)"
            )
    auroc = "n/a" if m["auroc"] is None else f"{m['auroc']:.4f}"
    lines.append(
        f"{m['split']}: n={m['n']}  accuracy {m['accuracy']:.4f}  balanced "
        f"{m['balanced_accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  AUROC {auroc}  "
        f"ECE {m['ece']:.4f}"
    )
    present = m.get("classes_present")
    if present is not None and len(present) < len(m["classes"]):
        lines.append(
            f"Scored over the classes present: {', '.join(present)} (the model also knows "
            f"{', '.join(c for c in m['classes'] if c not in present)})"
        )
    if m.get("n_unscored"):
        lines.append(f"{m['n_unscored']} image(s) of unscored classes (see where they went)")
    if "routing" in m:
        lines += ["Where the images went:", format_routing(m["routing"], m["class_matching"])]
    return "\n".join(lines)
