"""Analyses of finished runs: why pretraining helps (feature reuse, CKA)."""

from .cka import batch_bounds, cka_from_hsic, gram, hsic_matrix, linear_cka
from .reuse import (
    ReuseResult,
    analyze_reuse,
    init_kind,
    knn_accuracy,
    transfer_summary,
    unit_tensor_names,
    weight_change,
)

__all__ = [
    "ReuseResult",
    "analyze_reuse",
    "batch_bounds",
    "cka_from_hsic",
    "gram",
    "hsic_matrix",
    "init_kind",
    "knn_accuracy",
    "linear_cka",
    "transfer_summary",
    "unit_tensor_names",
    "weight_change",
]
