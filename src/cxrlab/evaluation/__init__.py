"""Evaluation: metrics and figures."""

from .intervals import bootstrap_interval, wilson_interval
from .metrics import classification_metrics, expected_calibration_error, per_source_metrics
from .run_figures import plot_confusion_matrix, plot_loss

__all__ = [
    "bootstrap_interval",
    "classification_metrics",
    "expected_calibration_error",
    "per_source_metrics",
    "plot_confusion_matrix",
    "plot_loss",
    "wilson_interval",
]
