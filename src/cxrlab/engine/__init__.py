"""The training engine: the configuration (:class:`TrainConfig`), batches from the
decoded-image cache and a model's predictions over them, the frozen-feature cache, the
optimiser and schedule, checkpoints, several processes, experiment trackers.

The loop that drives them and writes a run folder is :func:`cxrlab.training.train`; a
finished run folder is read and used through :mod:`cxrlab.runs`, which lies above this
package (it stores a run's TrainConfig and scores runs with its batches and features).
"""

from .train_config import TrainConfig

__all__ = ["TrainConfig"]
