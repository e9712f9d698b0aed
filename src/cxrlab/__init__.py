"""cxrlab: chest X-ray classification and transfer-learning studies.

The public API in a few names; everything else lives in the subpackages, in data-flow order:
``cxrlab.data`` -> ``cxrlab.models`` -> ``cxrlab.engine`` -> ``cxrlab.evaluation``.
"""

__version__ = "0.1.0"

from .data import make_split, prepare_data, scan_dataset, write_synthetic_dataset
from .errors import CxrlabError

__all__ = [
    "CxrlabError",
    "__version__",
    "make_split",
    "prepare_data",
    "scan_dataset",
    "write_synthetic_dataset",
]
