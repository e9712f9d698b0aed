"""Lung and infection segmentation: metrics of masks, turning a segmenter's output into
masks, and the infection's extent per lung (severity)."""

from .masks import LIMITS, MaskLimits, MaskVerdict, clean_infection, clean_mask, judge_mask
from .metrics import boundary, dice, hausdorff95, iou, mask_scores
from .severity import Severity, extent_grade, severity, split_lungs

__all__ = [
    "LIMITS",
    "MaskLimits",
    "MaskVerdict",
    "Severity",
    "boundary",
    "clean_infection",
    "clean_mask",
    "dice",
    "extent_grade",
    "hausdorff95",
    "iou",
    "judge_mask",
    "mask_scores",
    "severity",
    "split_lungs",
]
