"""cxrlab: chest X-ray classification and transfer-learning studies.

The public API in a few names; everything else lives in the subpackages, in data-flow order:
``cxrlab.data`` -> ``cxrlab.models`` -> ``cxrlab.freeze`` -> ``cxrlab.evaluation`` ->
``cxrlab.segment`` -> ``cxrlab.engine`` -> ``cxrlab.runs`` -> ``cxrlab.shift`` ->
``cxrlab.training`` -> ``cxrlab.adapt`` -> ``cxrlab.infer`` -> ``cxrlab.app`` ->
``cxrlab.audit`` -> ``cxrlab.analysis`` -> ``cxrlab.study`` (docs/development.md).

Names are imported on first use, so ``import cxrlab`` (and the CLI) start fast.

Example:
    >>> import cxrlab
    >>> report = cxrlab.scan_dataset("data/COVID-19_Radiography_Dataset")  # doctest: +SKIP
    >>> cfg = cxrlab.TrainConfig(data="data", freeze="head")
    >>> result = cxrlab.train(cfg, "runs/x")  # doctest: +SKIP
    >>> cxrlab.load("runs/x").predict("xray.png")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "CxrlabError": "cxrlab.errors",
    "scan_dataset": "cxrlab.data",
    "make_split": "cxrlab.data",
    "prepare_data": "cxrlab.data",
    "write_synthetic_dataset": "cxrlab.data",
    "create_model": "cxrlab.models",
    "list_models": "cxrlab.models",
    "TrainConfig": "cxrlab.engine",
    "train": "cxrlab.training",
    "evaluate_run": "cxrlab.runs",
    "load_study_config": "cxrlab.study",
    "run_study": "cxrlab.study",
    "build_report": "cxrlab.study",
    "Predictor": "cxrlab.infer",
    "load": "cxrlab.infer",
    "run_audit": "cxrlab.audit",
    "analyze_reuse": "cxrlab.analysis",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cxrlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
