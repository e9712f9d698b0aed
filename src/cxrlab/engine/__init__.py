"""Training: the configuration, batches from the decoded-image cache, the loop, optimiser
and schedule, checkpoints, frozen-feature caches, several processes, experiment trackers.

The building blocks (:mod:`.config`, :mod:`.batches`, :mod:`.features`) lie below
:mod:`cxrlab.runs`, which stores a run's configuration and scores a finished run with them;
the loop (:mod:`.trainer`) lies above it, since it writes a run folder through it. So
``train`` is imported on first use: ``import cxrlab.runs`` never imports the trainer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .train_config import TrainConfig

if TYPE_CHECKING:
    from .trainer import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]


def __getattr__(name: str) -> Any:
    if name in ("TrainResult", "train"):
        return getattr(importlib.import_module(".trainer", __name__), name)
    raise AttributeError(f"module 'cxrlab.engine' has no attribute {name!r}")
