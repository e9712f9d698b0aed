"""The training engine: configuration, batches, the loop, run folders, evaluation."""

from .config import TrainConfig
from .evaluate import evaluate_run, predict_batches
from .rundir import load_card, load_run_model, save_model
from .trainer import TrainResult, train

__all__ = [
    "TrainConfig",
    "TrainResult",
    "evaluate_run",
    "load_card",
    "load_run_model",
    "predict_batches",
    "save_model",
    "train",
]
