"""The training engine: configuration, batches, the loop, run folders and their typed
cards, opening a run for scoring, evaluation."""

from .card import EnsembleCard, RunCard, read_card
from .config import TrainConfig
from .evaluate import evaluate_run, predict_batches
from .rundir import load_card, load_run_model, save_model
from .scoring import ScoringRun, open_run
from .trainer import TrainResult, train

__all__ = [
    "EnsembleCard",
    "RunCard",
    "ScoringRun",
    "TrainConfig",
    "TrainResult",
    "evaluate_run",
    "load_card",
    "load_run_model",
    "open_run",
    "predict_batches",
    "read_card",
    "save_model",
    "train",
]
