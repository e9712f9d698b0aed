"""A finished run's ``metrics.json``, typed.

The trainer writes its test scores there last (a run with the file has finished);
:meth:`cxrlab.runs.RunDir.scores` reads them into a :class:`RunMetrics` that names every
field a run has. Fields a later cxrlab adds are kept in ``extra``, so that nothing read is
lost and an older cxrlab's file still reads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .. import run_files
from ..errors import CheckpointError

__all__ = ["RunMetrics"]


@dataclass(frozen=True)
class RunMetrics:
    """A run's scores on its test split, and how long it trained.

    ``per_class``: precision, recall, F1 and support per class; ``calibration``: the
    temperature and the validation/test scores before and after it; ``per_source``: each
    source's scores where the run trained on several.
    """

    n: int
    classes: tuple[str, ...]
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    auroc: float | None
    ece: float
    nll: float
    per_class: dict[str, dict[str, float]]
    confusion_matrix: list[list[int]]
    split: str = "test"
    loss: float | None = None
    calibration: dict[str, Any] | None = None
    best_epoch: int | None = None
    train_images: int | None = None
    epochs_run: int | None = None
    train_seconds: float = 0.0
    wall_seconds: float = 0.0
    per_source: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def correct(self) -> int:
        """Test images classified correctly."""
        return round(self.accuracy * self.n)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = run_files.METRICS) -> RunMetrics:
        """Read the file's fields (unknown ones kept in ``extra``).

        Raises:
            CheckpointError: a field every run has is missing or malformed.
        """
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        try:
            known["classes"] = tuple(known["classes"])
            return cls(**known, extra={k: v for k, v in data.items() if k not in names})
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{where} is not a readable metrics file: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        """The fields as the file holds them (``None`` optional fields left out)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "extra"}  # fmt: skip
        out["classes"] = list(self.classes)
        keep = {"auroc"}  # a field the file holds even when it is null
        return {k: v for k, v in out.items() if v is not None or k in keep} | self.extra
