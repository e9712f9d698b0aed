"""The names of the files in a run folder: one place for each.

A classifier's run folder, an ensemble's and a lung segmenter's share these names; what
they hold is read through :class:`cxrlab.runs.RunDir` (a classifier's or an ensemble's)
and :mod:`cxrlab.segment.model` (a segmenter's). This module imports nothing from cxrlab,
so that every package, the trainers included, can name the files.
"""

from __future__ import annotations

__all__ = [
    "AUDIT_DIR",
    "CARD",
    "CHECKPOINT",
    "CONFIG",
    "EXTERNAL_DIR",
    "HISTORY",
    "HOLDOUT",
    "INIT",
    "METRICS",
    "MODEL",
    "PREDICTIONS",
    "SEGMENTER_CARD",
    "SPLIT",
]

CARD = "model_card.json"  # a classifier's or an ensemble's card
SEGMENTER_CARD = "segmenter_card.json"  # a lung segmenter's card
MODEL = "model.safetensors"  # the weights (a classifier's or a segmenter's)
INIT = "init.safetensors"  # the weights a run started from (--keep-init)
CHECKPOINT = "checkpoint.pt"  # resumable state while training; removed when it finishes
CONFIG = "config.json"  # the configuration as given and as resolved
METRICS = "metrics.json"  # written last: a run with it has finished
SPLIT = "split.csv"  # the split it trained on
HISTORY = "history.csv"  # one row per epoch
PREDICTIONS = "predictions.csv"  # per-image test predictions
HOLDOUT = "holdout.json"  # scores on the sources it held out
EXTERNAL_DIR = "external"  # scores on external sets, one file per set
AUDIT_DIR = "audit"  # its shortcut audit (in a study)
