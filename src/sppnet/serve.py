"""An HTTP prediction service and its web page (``sppnet serve``; extra ``sppnet[serve]``).

    app = create_app(Predictor.from_run("runs/spp"))   # a FastAPI (ASGI) application
    # or: sppnet serve runs/spp --port 8000

Endpoints:
    * ``POST /predict``: an image as the multipart file field ``image`` or as the raw request
      body. Answers ``{"class", "confidence", "probabilities", "width", "height", "sentence"}``;
      400 with ``{"error": ...}`` for what is not a readable image (not an image, truncated, a
      decompression bomb, no ``image`` field); 413 above the upload limit (default 10 MB).
    * ``GET /health``: ``{"status": "ok"}``.
    * ``GET /model``: classes, training size, model name, sppnet version.
    * ``GET /``: the page: pick or drop a photo, see it, its class and a bar per class. Served
      entirely by sppnet (no external assets).

One model is loaded per server and shared by all requests; predictions run in inference mode on
a worker thread each, so requests are handled concurrently without blocking the event loop.
"""

import math
import os
import socket
from importlib import resources
from typing import AsyncIterator, Callable

from . import runtime
from .errors import ConfigError, DataError
from .predict import Predictor, load_predictor

__all__ = ["create_app", "serve", "serve_run", "require_serve_deps", "DEFAULT_MAX_UPLOAD"]

DEFAULT_MAX_UPLOAD = 10 * 1024 * 1024  # bytes


def require_serve_deps() -> None:
    """Raises ConfigError (one line, with the install command) if the serve extra is missing."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
        import python_multipart  # noqa: F401  (form uploads)
    except ImportError as err:
        raise ConfigError(
            f"sppnet serve needs the serve extra ({err.name} is missing): pip install 'sppnet[serve]'"
        ) from None


class _TooLarge(Exception):
    pass


def create_app(predictor: Predictor, max_upload: int = DEFAULT_MAX_UPLOAD, model_info: dict | None = None):
    """The service as a FastAPI application.

    Args:
        predictor: the loaded model; shared by every request.
        max_upload: the largest request body accepted, in bytes (larger ones get 413).
        model_info: extra fields for ``GET /model`` (e.g. the model's name and source).
    """
    require_serve_deps()
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    from ._version import __version__

    if isinstance(max_upload, bool) or not isinstance(max_upload, int) or max_upload < 1:
        raise ConfigError(f"--max-upload-mb must be positive, got {max_upload!r} bytes")
    page = resources.files("sppnet").joinpath("static/index.html").read_text(encoding="utf-8")
    info = {
        "classes": predictor.class_names,
        "input_size": predictor.train_size,
        "sppnet_version": __version__,
        "max_upload_bytes": max_upload,
        **(model_info or {}),
    }
    app = FastAPI(title="sppnet", version=__version__, docs_url=None, redoc_url=None)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_upload:
            raise _TooLarge
        chunks, size = [], 0
        async for chunk in request.stream():  # also bounds chunked uploads without a length
            size += len(chunk)
            if size > max_upload:
                raise _TooLarge
            chunks.append(chunk)
        return b"".join(chunks)

    async def image_bytes(request: Request, body: bytes) -> tuple[bytes, str]:
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            return body, "the request body"

        async def once() -> AsyncIterator[bytes]:
            yield body

        try:
            form = await MultiPartParser(request.headers, once(), max_files=4, max_fields=16).parse()
        except MultiPartException as err:
            raise DataError(f"malformed multipart upload ({err.message})") from None
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise DataError("multipart upload has no file field 'image'")
        try:
            return await upload.read(), upload.filename or "image"
        finally:
            await form.close()

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/model")
    async def model() -> dict:
        return info

    @app.post("/predict")
    async def predict(request: Request):
        try:
            body = await read_body(request)
        except _TooLarge:
            return error(413, f"upload larger than the limit of {max_upload:,} bytes")
        try:
            data, name = await image_bytes(request, body)
            if not data:
                raise DataError(f"{name}: empty upload, expected an image")
            result = await run_in_threadpool(predictor.predict, data, name)
        except DataError as err:
            return error(400, str(err))
        out = result.to_dict()
        out.pop("image", None)
        out["sentence"] = result.sentence()
        return out

    return app


def serve(predictor: Predictor, host: str = "127.0.0.1", port: int = 8000, max_upload: int = DEFAULT_MAX_UPLOAD,
          model_info: dict | None = None, log_level: str = "info", on_ready: Callable[[str], None] | None = None) -> None:
    """Runs the service with uvicorn until interrupted.

    ``on_ready(url)`` is called once the address is known to be free, just before serving.
    """
    app = create_app(predictor, max_upload, model_info)  # checks the serve extra is installed
    import uvicorn

    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"--port must be an integer in 0..65535, got {port!r}")
    try:  # a clear line now rather than uvicorn's log and exit
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as err:
        raise ConfigError(f"--host {host} --port {port}: cannot listen there ({err.strerror or err})") from None
    runtime.configure()
    if on_ready is not None:
        on_ready(f"http://{host}:{port}/")
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)


def serve_run(run_dir: str | os.PathLike | None = None, onnx: str | os.PathLike | None = None,
              host: str = "127.0.0.1", port: int = 8000, max_upload_mb: float = 10.0, size: int | None = None,
              weights: str = "best", device: str = "cpu", on_ready: Callable[[str], None] | None = None) -> None:
    """Serves a run folder (or an ONNX file) until interrupted: what ``sppnet serve`` does.

    Raises:
        ConfigError: the serve extra is missing, or a bad option (named).
    """
    require_serve_deps()
    if not (isinstance(max_upload_mb, (int, float)) and math.isfinite(max_upload_mb) and max_upload_mb > 0):
        raise ConfigError(f"--max-upload-mb must be a positive number, got {max_upload_mb}")
    if onnx and run_dir:
        raise ConfigError("give either a run folder or --onnx FILE, not both")
    if not onnx and not run_dir:
        raise ConfigError("give a run folder to serve (or --onnx FILE): sppnet serve RUN")
    predictor = load_predictor(run_dir if not onnx else None, onnx, weights, size, device)
    if onnx:
        info = {"model": "onnx", "source": str(onnx)}
    else:
        info = {"model": predictor.model.config.get("name", "model"), "source": str(run_dir)}
    serve(predictor, host, port, int(max_upload_mb * 1024 * 1024), info, on_ready=on_ready)
