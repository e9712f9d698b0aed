"""Studies: a grid of training runs from a TOML file, run resumably, with a report."""

from .final import choose_final
from .report import build_report
from .runner import StudyProgress, run_study, select_cells
from .study_config import (
    Cell,
    StudyConfig,
    arm_label,
    load_study_config,
    load_study_folder,
    parse_study_config,
)

__all__ = [
    "Cell",
    "StudyConfig",
    "StudyProgress",
    "arm_label",
    "build_report",
    "choose_final",
    "load_study_config",
    "load_study_folder",
    "parse_study_config",
    "run_study",
    "select_cells",
]
