"""Models: the registry, pretrained weights, and the X-ray classifier wrapper."""

from .classifier import CxrClassifier, Preprocess, PreprocessConfig, forward_images
from .init import InitReport, WeightsSpec, parse_weights, statistics_transfer
from .registry import MODELS, ModelSpec, create_model, get_spec, list_models, register_model
from .weights import load_state_dict_file, map_lukemelas_efficientnet

__all__ = [
    "MODELS",
    "CxrClassifier",
    "InitReport",
    "ModelSpec",
    "Preprocess",
    "PreprocessConfig",
    "WeightsSpec",
    "create_model",
    "forward_images",
    "get_spec",
    "list_models",
    "load_state_dict_file",
    "map_lukemelas_efficientnet",
    "parse_weights",
    "register_model",
    "statistics_transfer",
]
