"""Evaluation: metrics and figures."""

from .figures import plot_confusion_matrix, plot_loss
from .intervals import bootstrap_interval, wilson_interval
from .metrics import classification_metrics, expected_calibration_error, per_source_metrics

__all__ = [
    "bootstrap_interval",
    "classification_metrics",
    "expected_calibration_error",
    "per_source_metrics",
    "plot_confusion_matrix",
    "plot_loss",
    "wilson_interval",
]
