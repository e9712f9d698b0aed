"""Exceptions raised by cxrlab.

Every error a user can cause (a bad path, a corrupt file, a wrong config value, weights for
another model) is a :class:`CxrlabError` subclass whose message names the value, what was
expected and what to do next. The CLI prints the message on one line and exits non-zero
instead of showing a traceback.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "CxrlabError",
    "DataError",
    "TrainingError",
    "TrainingInterrupted",
    "WeightsError",
]


class CxrlabError(Exception):
    """Base class of every error cxrlab raises on purpose."""


class DataError(CxrlabError):
    """The dataset is missing, empty, in an unknown layout or otherwise unusable."""


class ConfigError(CxrlabError, ValueError):
    """A configuration value or key is invalid."""


class WeightsError(CxrlabError):
    """Pretrained weights cannot be found, downloaded or matched to the model."""


class CheckpointError(CxrlabError):
    """A checkpoint or run folder does not fit the model, the classes or the run."""


class TrainingError(CxrlabError):
    """Training stopped because it cannot go on (for example a non-finite loss)."""


class TrainingInterrupted(CxrlabError):
    """Training was stopped by Ctrl-C or SIGTERM after saving a resumable checkpoint."""
