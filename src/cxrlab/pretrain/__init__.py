"""Self-supervised pretraining on chest X-rays (``cxrlab pretrain``), and the check that a
pretrained backbone never saw the images a later run is evaluated on."""

from .card import PretrainCard, PretrainConfig, read_pretrain_card
from .methods import METHODS, embedding_spread
from .train import COLLAPSE, knn_accuracy, pretrain

__all__ = [
    "COLLAPSE",
    "METHODS",
    "PretrainCard",
    "PretrainConfig",
    "embedding_spread",
    "knn_accuracy",
    "pretrain",
    "read_pretrain_card",
]
