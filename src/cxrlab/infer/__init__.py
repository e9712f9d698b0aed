"""Using trained models: prediction, Grad-CAM explanations, export."""

from .cam import cam_overlay, gradcam, save_cam_overlay, target_layer
from .export import FORMATS, export_model
from .predict import Predictions, collect_inputs, predict_paths
from .predictor import Predictor, load

__all__ = [
    "FORMATS",
    "Predictions",
    "Predictor",
    "cam_overlay",
    "collect_inputs",
    "export_model",
    "gradcam",
    "load",
    "predict_paths",
    "save_cam_overlay",
    "target_layer",
]
