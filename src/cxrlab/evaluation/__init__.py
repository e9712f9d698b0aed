"""Evaluation: metrics and figures."""

from .figures import plot_confusion_matrix, plot_loss
from .metrics import classification_metrics, expected_calibration_error

__all__ = [
    "classification_metrics",
    "expected_calibration_error",
    "plot_confusion_matrix",
    "plot_loss",
]
