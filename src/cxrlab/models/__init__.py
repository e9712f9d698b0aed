"""Models: the registry, pretrained weights, and the X-ray classifier wrapper."""

from .classifier import CxrClassifier, Preprocess, PreprocessConfig
from .registry import MODELS, ModelSpec, create_model, get_spec, list_models, register_model
from .weights import load_state_dict_file, map_lukemelas_efficientnet

__all__ = [
    "MODELS",
    "CxrClassifier",
    "ModelSpec",
    "Preprocess",
    "PreprocessConfig",
    "create_model",
    "get_spec",
    "list_models",
    "load_state_dict_file",
    "map_lukemelas_efficientnet",
    "register_model",
]
