"""What a feature-reuse analysis measured (:func:`~cxrlab.analysis.analyze_reuse`), the
one object its writers (:mod:`.report`) read."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ReuseResult"]


@dataclass
class ReuseResult:
    """What :func:`analyze_reuse` measured; ``table`` has one row per run and unit."""

    out: Path
    runs: list[dict[str, Any]]
    table: list[dict[str, Any]]
    pairs: list[dict[str, Any]] = field(default_factory=list)
    summary: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
