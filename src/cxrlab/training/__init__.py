"""Training one classifier: :func:`train` drives the engine (:mod:`cxrlab.engine`: the
configuration, batches, frozen-feature cache, optimiser, checkpoints, several processes,
trackers) and writes a run folder through :mod:`cxrlab.runs`, the package everything that
uses a finished run imports. It lies above both, so neither imports the loop.

Example:
    >>> from cxrlab.training import TrainConfig, train
    >>> result = train(TrainConfig(data="phantoms", freeze="head"), "runs/x")  # doctest: +SKIP
"""

from ..engine.train_config import TrainConfig
from .trainer import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
