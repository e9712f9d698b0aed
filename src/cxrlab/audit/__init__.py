"""Shortcut audits: is the model looking at the lungs, and how does it do elsewhere?"""

from .checks import LUNG_VARIANTS, cam_in_lungs, lungs_removed
from .core import CHECKS, AuditResult, run_audit
from .probes import PROBES, acquisition_probes

__all__ = [
    "CHECKS",
    "LUNG_VARIANTS",
    "PROBES",
    "AuditResult",
    "acquisition_probes",
    "cam_in_lungs",
    "lungs_removed",
    "run_audit",
]
