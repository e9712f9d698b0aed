"""Runs that failed to train: flagged so no comparison quietly rests on a broken baseline.

A comparison against a baseline that never learned says nothing about the method it is
compared with ("pretraining wins by 40 points" against a model at chance). Two signs are
checked for every run:

* **not above chance**: the 95 % Wilson interval of the test accuracy reaches down to the
  accuracy of always answering the most common test class;
* **validation loss rose from epoch 1**: over three or more epochs, the validation loss was lowest
  after the first epoch and ended higher, while the training loss fell (the model fitted
  the training images without learning anything that carried over).

A third sign makes a run's numbers incomparable rather than broken:

* **pretraining saw test images**: its backbone came from a ``cxrlab pretrain`` run that saw
  some of its validation or test images (allowed only with ``--allow-transductive``).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from ... import run_files
from ...evaluation.intervals import wilson_interval

__all__ = ["DIVERGED", "NOT_ABOVE_CHANCE", "TRANSDUCTIVE", "run_flags"]


def _history(run_dir: Path) -> list[dict[str, float]]:
    try:
        with open(run_dir / run_files.HISTORY, newline="") as f:
            return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    except (OSError, ValueError):
        return []


#: Short names of the flags, as verdicts cite them.
NOT_ABOVE_CHANCE = "not above chance"
DIVERGED = "validation loss rose from epoch 1"
TRANSDUCTIVE = "pretraining saw test images"


def run_flags(run_dir: Path, metrics: dict[str, Any]) -> dict[str, str]:
    """``{short name: detail}`` of the reasons to distrust a finished run as a baseline."""
    flags = {}
    cm = np.asarray(metrics.get("confusion_matrix") or [[0]])
    n = int(metrics.get("n", 0))
    if n:
        chance = float(cm.sum(axis=1).max() / n)
        low, high = wilson_interval(round(metrics["accuracy"] * n), n)
        if low <= chance:
            flags[NOT_ABOVE_CHANCE] = (
                f"test accuracy {metrics['accuracy']:.3f} [{low:.3f}, {high:.3f}] is not above "
                f"chance ({chance:.3f}, always the most common class)"
            )
    history = _history(run_dir)
    if len(history) >= 3:
        val = [h["val_loss"] for h in history]
        train = [h["train_loss"] for h in history]
        if int(np.argmin(val)) == 0 and val[-1] > val[0] and train[-1] < train[0]:
            flags[DIVERGED] = (
                f"validation loss was lowest after epoch 1 ({val[0]:.3f}) and rose to "
                f"{val[-1]:.3f} while the training loss fell ({train[0]:.3f} -> {train[-1]:.3f}); "
                "the kept checkpoint is from epoch 1"
            )
    seen = _pretraining_seen(run_dir)
    if seen:
        flags[TRANSDUCTIVE] = (
            f"its backbone's self-supervised pretraining saw {seen} of its validation and test "
            "images (--allow-transductive): its scores are transductive"
        )
    return flags


def _pretraining_seen(run_dir: Path) -> int:
    """How many of a run's validation and test images its pretraining saw (0: none, or not
    a pretrained run, or no readable card)."""
    from ...errors import CheckpointError
    from ...runs import RunDir

    try:
        record = RunDir(run_dir).card().pretraining
    except (CheckpointError, OSError):
        return 0
    return record.eval_images_seen if record is not None else 0
