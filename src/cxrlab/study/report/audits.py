"""The study report's shortcut-audit section, read from each cell's ``audit/audit.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ... import run_files
from .results import StudyResults, markdown_table

__all__ = ["StudyAudits", "audit_markdown", "audit_rows", "collect_audits"]

AUDIT_HEADER = ["cell", "accuracy", "lungs removed", "lungs only", "kept above chance",
                "Grad-CAM in lungs (lung area)", "test images copying training"]  # fmt: skip


@dataclass
class StudyAudits:
    """Each audited cell's audit, and the study data's probes."""

    cells: dict[str, dict[str, Any]] = field(default_factory=dict)  # cell id -> audit.json
    data: dict[str, Any] | None = None  # the probes of the study's split
    folder: dict[str, Path] = field(default_factory=dict)  # where each audit's figures are

    def __bool__(self) -> bool:
        return bool(self.cells) or self.data is not None


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def collect_audits(study_dir: Path, results: StudyResults) -> StudyAudits:
    audits = StudyAudits()
    for r in results.rows:
        folder = study_dir / "runs" / r["cell"] / "audit"
        if (a := _read(folder / run_files.AUDIT_JSON)) is not None:
            audits.cells[r["cell"]] = a
            audits.folder[r["cell"]] = folder
    if (d := _read(study_dir / run_files.AUDIT_DIR / run_files.AUDIT_JSON)) is not None:
        audits.data = d
        audits.folder["data"] = study_dir / "audit"
    return audits


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.0f} %"


def _why_not(audit: dict[str, Any]) -> str:
    trained = audit.get("trained_with_lungs", "keep")
    if trained != "keep":
        return f"- (trained with lungs {trained})"
    return "- (no masks)" if "skipped" in audit.get("checks", {}).get("lungs", {}) else "-"


def audit_rows(audits: StudyAudits) -> list[list[str]]:
    """One row per audited cell, in the order of :data:`AUDIT_HEADER`."""
    rows = []
    for cell, a in audits.cells.items():
        checks = a.get("checks", {})
        lungs = checks.get("lungs", {})
        variants = lungs.get("variants", {})
        removed = variants.get("lungs removed (mean fill)", {})
        only = variants.get("lungs only (mean fill outside)", {})
        cam = checks.get("cam", {})
        copies = checks.get("copies", {})
        rows.append([
            cell,
            f"{a['normal']['accuracy']:.3f}",
            f"{removed['accuracy']:.3f}" if removed else _why_not(a),
            f"{only['accuracy']:.3f}" if only else "-",
            _pct(removed.get("retained")) if removed else "-",
            f"{_pct(cam['share'])} ({_pct(cam['lung_area'])})" if "share" in cam else "-",
            str(copies.get("n_with_copy", "-")),
        ])  # fmt: skip
    return rows


def audit_markdown(audits: StudyAudits) -> list[str]:
    """The summary's shortcut-audit section (see :mod:`.audits`)."""
    lines = ["## Shortcut audit", ""]
    rows = audit_rows(audits)
    if rows:
        lines += markdown_table(list(AUDIT_HEADER), rows)
        lines += ["", "Accuracy on the same test images as they are, with the lungs filled "
                  "(mean of the rest of the image) and with everything outside the lungs "
                  "filled; 'kept above chance' is the share of the above-chance accuracy left "
                  "without the lungs. Each cell's audit/audit.md has the intervals and "
                  "figures.", ""]  # fmt: skip
    probes = (audits.data or {}).get("checks", {}).get("probes", {})
    if probes:
        text = probes.get("finding") or f"skipped: {probes.get('skipped', '')}"
        lines.append(f"- Acquisition probes: {text}")
    return lines
