"""A run folder and everything that uses a finished run: its typed card, its weights,
opening it for scoring (:func:`open_run`), evaluation, ensembles, external sets and
held-out sources.

Everything that uses a trained model (``infer``, ``audit``, ``analysis``, ``app``,
``shift``, ``adapt``, ``study``) imports this package, not the trainer.
"""

from .card import EnsembleCard, RunCard, read_card
from .evaluate import evaluate_run
from .folder import RunDir, load_card, load_run_model, save_model
from .metrics import RunMetrics
from .scoring import ScoringRun, open_run

__all__ = [
    "EnsembleCard",
    "RunCard",
    "RunDir",
    "RunMetrics",
    "ScoringRun",
    "evaluate_run",
    "load_card",
    "load_run_model",
    "open_run",
    "read_card",
    "save_model",
]
