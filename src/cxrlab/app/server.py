"""``cxrlab serve``: the browser app and a JSON API on one local web server.

The server is a FastAPI application (Gradio's own server framework) with:

- ``GET /`` the Gradio page (:func:`~cxrlab.app.ui.build_blocks`);
- ``GET /api/health`` and ``GET /api/models`` (the model cards as JSON);
- ``POST /api/predict``: one or more files as ``multipart/form-data`` field ``files``;
  ``cam=true`` adds each model's Grad-CAM overlay (base64 PNG), ``cam_class`` picks the class
  to explain, ``format=csv`` answers with the CSV the page offers for download.

FastAPI's interactive docs are switched off: their page loads Swagger UI from a CDN, and
nothing the server offers may make a browser leave the machine.
"""

# no ``from __future__ import annotations`` here: FastAPI reads the endpoint's annotations
# at run time, and ``UploadFile`` is imported inside build_app (gradio is optional)
import ipaddress
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import CxrlabError
from .service import DISCLAIMER, MAX_PIXELS, ModelService
from .ui import CSS, build_blocks, theme

__all__ = ["BackgroundServer", "build_app", "is_loopback", "serve", "start_in_background"]

#: Default upload limit per request, in MB (a radiograph PNG is 0.1-30 MB).
MAX_UPLOAD_MB = 50


def _require_app_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import gradio  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise CxrlabError(
            f"cxrlab serve needs Gradio ({e.name} is missing): pip install 'cxrlab[app]'"
        ) from e


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_app(service: ModelService, *, max_upload_mb: float = MAX_UPLOAD_MB) -> Any:
    """The FastAPI application: the JSON API under ``/api`` and the Gradio page at ``/``."""
    _require_app_extra()
    import gradio as gr
    from fastapi import FastAPI, File, Form, Request, UploadFile
    from fastapi.responses import JSONResponse, PlainTextResponse

    limit = int(max_upload_mb * 1024 * 1024)
    api = FastAPI(title="cxrlab", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")

    @api.middleware("http")
    async def refuse_large_uploads(request: Request, call_next: Any) -> Any:
        # the JSON API reads whole uploads: refuse oversized bodies before reading them
        if request.method == "POST" and request.url.path.startswith("/api/"):
            length = request.headers.get("content-length")
            if length is None:
                return JSONResponse({"error": "send a Content-Length header"}, status_code=411)
            if not length.isdigit() or int(length) > limit:
                return JSONResponse(
                    {
                        "error": f"upload too large: over the {max_upload_mb:g} MB limit "
                        "(cxrlab serve --max-upload-mb)"
                    },
                    status_code=413,
                )
        return await call_next(request)

    @api.get("/api/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "models": [m.name for m in service.models]}

    @api.get("/api/models")
    def models() -> dict[str, Any]:
        return {"disclaimer": DISCLAIMER, "models": [m.summary() for m in service.models]}

    @api.post("/api/predict", response_model=None)
    def predict(
        files: list[UploadFile] = File(...),
        cam: bool = Form(False),
        cam_class: str | None = Form(None),
        format: str = Form("json"),
    ) -> Any:
        if format not in ("json", "csv"):
            return JSONResponse({"error": "format must be json or csv"}, status_code=422)
        folder = Path(tempfile.mkdtemp(prefix="cxrlab-api-"))
        try:
            pairs = []
            for i, upload in enumerate(files):
                path = folder / f"{i:04d}"
                with open(path, "wb") as f:
                    shutil.copyfileobj(upload.file, f)
                pairs.append((upload.filename or f"file-{i}", path))
            outcomes = service.classify(pairs, cam=cam, cam_class=cam_class or None)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if format == "csv":
            return PlainTextResponse(service.to_csv(outcomes), media_type="text/csv")
        return {
            "disclaimer": DISCLAIMER,
            "classes": service.classes,
            "results": [o.to_dict(with_cam=cam) for o in outcomes],
        }

    return gr.mount_gradio_app(
        api,
        build_blocks(service),
        path="/",
        theme=theme(),
        css=CSS,
        ssr_mode=False,  # no Node.js server
        footer_links=["api"],
        max_file_size=limit,
        show_error=True,
    )


class BackgroundServer:
    """A uvicorn server in a thread (tests, notebooks): ``url``, then :meth:`stop`."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        config = uvicorn.Config(app, host=host, port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise CxrlabError(f"The server did not start on {host}:{port}")
            time.sleep(0.05)
        sock = self.server.servers[0].sockets[0]
        bound_port = sock.getsockname()[1]
        self.url = f"http://{host}:{bound_port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def __enter__(self) -> "BackgroundServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_in_background(
    sources: Sequence[str | os.PathLike[str]],
    host: str = "127.0.0.1",
    port: int = 0,
    device: str = "cpu",
    max_upload_mb: float = MAX_UPLOAD_MB,
) -> BackgroundServer:
    """:func:`serve` in a background thread; ``port=0`` picks a free port."""
    service = ModelService(sources, device=device)
    return BackgroundServer(build_app(service, max_upload_mb=max_upload_mb), host, port)


def serve(
    sources: Sequence[str | os.PathLike[str]],
    host: str = "127.0.0.1",
    port: int = 7860,
    *,
    device: str = "cpu",
    max_upload_mb: float = MAX_UPLOAD_MB,
    max_pixels: int = MAX_PIXELS,
    masks_from: str | os.PathLike[str] | None = None,
    doubtful: str = "skip",
    infection: str | os.PathLike[str] | None = None,
    echo: Any = print,
) -> None:
    """Serve the app and API until interrupted (Ctrl-C).

    Binds to ``127.0.0.1`` (this machine only) unless ``host`` says otherwise; another host
    is served without authentication, which the start message says. ``masks_from`` and
    ``doubtful``: as for :func:`cxrlab.load`, for runs trained with ``--lungs``;
    ``infection``: an infection segmenter (see :class:`~cxrlab.app.service.ModelService`).
    """
    _require_app_extra()
    import uvicorn

    service = ModelService(sources, device=device, max_pixels=max_pixels,
                           masks_from=masks_from, doubtful=doubtful,
                           infection=infection)  # fmt: skip
    app = build_app(service, max_upload_mb=max_upload_mb)
    names = ", ".join(m.name for m in service.models)
    echo(f"cxrlab serve: {len(service.models)} model(s): {names}")
    echo(f"  app  http://{host}:{port}/")
    echo(f"  API  http://{host}:{port}/api/predict (docs/predict-serve.md)")
    if is_loopback(host):
        echo(f"  bound to {host}: reachable from this machine only (--host 0.0.0.0 to share)")
    else:
        echo(
            f"  WARNING: bound to {host}: reachable from other machines, with no "
            "authentication; anyone who can reach it can upload images"
        )
    echo(f"  {DISCLAIMER}")
    uvicorn.run(app, host=host, port=port, log_level="warning")
