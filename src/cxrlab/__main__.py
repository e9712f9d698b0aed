"""``python -m cxrlab`` (also what ``torchrun -m cxrlab`` starts)."""

from .cli import run

run()
