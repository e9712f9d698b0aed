"""The ``cxrlab`` command: a thin layer over the Python API.

Each command parses its options, calls one API function and prints the result. Errors a user
can cause print one line (``cxrlab: error: ...``) and exit with status 2. One module per group
of commands; :mod:`.common` holds what they share, and ``cxrlab train``'s options are
generated from :class:`~cxrlab.engine.TrainConfig`.
"""

from __future__ import annotations

import sys

import typer

from ..errors import CxrlabError, TrainingInterrupted
from . import data, score, segment, study, train, use  # noqa: F401 - they register commands
from .common import app

__all__ = ["app", "main", "run"]


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit status (for tests: ``main(["data", "scan", ...])``)."""
    try:
        app(args=argv, prog_name="cxrlab")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except TrainingInterrupted as e:
        typer.echo(f"cxrlab: {e}", err=True)
        return 130
    except CxrlabError as e:
        typer.echo(f"cxrlab: error: {e}", err=True)
        return 2
    except KeyboardInterrupt:
        typer.echo("cxrlab: interrupted", err=True)
        return 130
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
