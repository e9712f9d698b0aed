"""The names of the files in a run folder: one place for each.

A classifier's run folder, an ensemble's, a segmenter's and a pretraining run's share these
names; what they hold is read through :class:`cxrlab.runs.RunDir` (a classifier's or an
ensemble's), :mod:`cxrlab.segment.model` (a segmenter's) and :mod:`cxrlab.pretrain.card` (a
pretraining run's). This module imports nothing from cxrlab,
so that every package, the trainers included, can name the files.
"""

from __future__ import annotations

__all__ = [
    "ADAPTATION",
    "AUDIT_DIR",
    "AUDIT_JSON",
    "AUDIT_MD",
    "BACKBONE",
    "CARD",
    "CHECKPOINT",
    "CONFIG",
    "CONFUSION_FIGURE",
    "EXTERNAL_DIR",
    "FIGURES",
    "HISTORY",
    "HOLDOUT",
    "INIT",
    "LOSS_FIGURE",
    "METRICS",
    "MODEL",
    "PREDICTIONS",
    "PRETRAIN_CARD",
    "PRETRAIN_IMAGES",
    "PRETRAIN_SIGNATURES",
    "RELIABILITY_FIGURE",
    "SEGMENTER_CARD",
    "SHIFT_DIR",
    "SITE_SPLIT",
    "SPLIT",
    "TRACKING",
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
AUDIT_DIR = "audit"  # its shortcut audit (the default place of 'cxrlab audit RUN')
AUDIT_JSON = "audit.json"  # in an audit folder: the findings
AUDIT_MD = "audit.md"  # in an audit folder: the report
SHIFT_DIR = "shift"  # what 'cxrlab shift' and 'predict' compare new images with
TRACKING = "tracking.json"  # the experiment trackers' run ids, to resume them
PRETRAIN_CARD = "pretrain_card.json"  # a self-supervised pretraining run's card
BACKBONE = "backbone.safetensors"  # a pretraining run's backbone (no classifier head)
PRETRAIN_IMAGES = "images.csv"  # a pretraining run: every image it saw, with its content hash
PRETRAIN_SIGNATURES = "signatures.npz"  # a pretraining run: their perceptual signatures
ADAPTATION = "adaptation.json"  # an adapted run: how it was adapted, and its scores
SITE_SPLIT = "site_split.csv"  # an adapted run: the site's images read and scored
#: The figures of a finished run.
LOSS_FIGURE = "loss.png"
CONFUSION_FIGURE = "confusion_matrix.png"
RELIABILITY_FIGURE = "reliability.png"
FIGURES = (LOSS_FIGURE, CONFUSION_FIGURE, RELIABILITY_FIGURE)
