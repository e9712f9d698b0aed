"""The browser app and HTTP API for trained models (``cxrlab serve``).

:class:`ModelService` does the work without any web framework; :func:`build_app` puts it
behind a Gradio page and a JSON API; :func:`serve` runs it. Needs ``pip install 'cxrlab[app]'``.
"""

from .server import BackgroundServer, build_app, is_loopback, serve, start_in_background
from .service import DISCLAIMER, ImageOutcome, ModelOutput, ModelService
from .ui import build_blocks, results_html

__all__ = [
    "DISCLAIMER",
    "BackgroundServer",
    "ImageOutcome",
    "ModelOutput",
    "ModelService",
    "build_app",
    "build_blocks",
    "is_loopback",
    "results_html",
    "serve",
    "start_in_background",
]
