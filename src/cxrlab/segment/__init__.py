"""Lung segmentation: metrics of masks, and turning a segmenter's output into masks."""

from .masks import LIMITS, MaskLimits, MaskVerdict, clean_mask, judge_mask
from .metrics import boundary, dice, hausdorff95, iou, mask_scores

__all__ = [
    "LIMITS",
    "MaskLimits",
    "MaskVerdict",
    "boundary",
    "clean_mask",
    "dice",
    "hausdorff95",
    "iou",
    "judge_mask",
    "mask_scores",
]
