"""The feature-reuse analysis of a study (``[analysis]``) in its report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["ANALYSIS_DIR", "read_reuse", "reuse_sections"]

ANALYSIS_DIR = "analysis"


def read_reuse(study_dir: Path) -> dict[str, Any] | None:
    """The study's ``analysis/reuse.json``, if the analysis has run."""
    path = study_dir / ANALYSIS_DIR / "reuse.json"
    return json.loads(path.read_text()) if path.is_file() else None


def reuse_sections(study_dir: Path) -> list[tuple[str, list[str]]]:
    """``(title, lines)`` of each ``##`` section of ``analysis/reuse.md`` (no figures)."""
    path = study_dir / ANALYSIS_DIR / "reuse.md"
    if not path.is_file():
        return []
    sections: list[tuple[str, list[str]]] = []
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            sections.append((line[3:], []))
        elif sections and not line.startswith("!["):
            sections[-1][1].append(line)
    return sections
