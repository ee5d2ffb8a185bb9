"""An HTTP prediction service and its web page (``sppnet serve``; extra ``sppnet[serve]``).

    app = create_app(Predictor.from_run("runs/spp"))   # a FastAPI (ASGI) application
    # or: sppnet serve runs/spp --port 8000

Endpoints:
    * ``POST /predict``: an image as the multipart file field ``image`` or as the raw request
      body. Answers ``{"class", "confidence", "probabilities", "width", "height", "sentence"}``;
      400 with ``{"error": ...}`` for what is not a readable image (not an image, truncated, a
      decompression bomb, no ``image`` field); 413 above the upload limit (default 10 MB).
    * ``POST /explain``: the same uploads; answers the prediction, the class explained, the SPP
      bins' shares of its evidence (``pyramid``), the heat map's peak and the heat map as an RGBA
      PNG laid over the photo's size (``heatmap_png``, base64), or the PNG itself with
      ``?format=png`` (see :mod:`sppnet.explain`).
    * ``GET /health``: ``{"status": "ok"}``.
    * ``GET /model``: classes, training size, model name, sppnet version.
    * ``GET /``: the page: pick or drop a photo, see it, its class and a bar per class. Served
      entirely by sppnet (no external assets).

One model is loaded per server and shared by all requests; predictions run in inference mode on
a worker thread each, so requests are handled concurrently without blocking the event loop.

Limits against slow or hostile clients (:func:`serve`'s arguments, ``sppnet serve``'s options):
a request's headers must arrive within ``header_timeout`` seconds (default 10) and its body within
``body_timeout`` seconds more (default 30), else the connection is closed; at most
``max_connections`` connections are served at once (default 100; more get 503); a client that
goes away mid-upload is dropped quietly.
"""

import asyncio
import base64
import logging
import math
import os
import socket
from pathlib import Path
from importlib import resources
from typing import AsyncIterator, Callable

from . import runtime
from .errors import ConfigError, DataError
from .predict import Predictor, load_predictor
from .runs import RunFolder

log = logging.getLogger(__name__)

__all__ = [
    "create_app", "serve", "serve_run", "guarded_protocol", "require_serve_deps", "DEFAULT_MAX_UPLOAD",
    "DEFAULT_HEADER_TIMEOUT", "DEFAULT_BODY_TIMEOUT", "DEFAULT_MAX_CONNECTIONS",
]

DEFAULT_MAX_UPLOAD = 10 * 1024 * 1024  # bytes
DEFAULT_HEADER_TIMEOUT = 10.0  # seconds for a request's headers
DEFAULT_BODY_TIMEOUT = 30.0  # seconds for its body, after the headers
DEFAULT_MAX_CONNECTIONS = 100


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
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser
    from starlette.requests import ClientDisconnect

    from ._version import __version__

    if isinstance(max_upload, bool) or not isinstance(max_upload, int) or max_upload < 1:
        raise ConfigError(f"--max-upload-mb must be positive, got {max_upload!r} bytes")
    page = resources.files("sppnet").joinpath("static/index.html").read_text(encoding="utf-8")
    info = {
        "classes": predictor.class_names,
        "input_size": predictor.train_size,
        "warped": predictor.size,  # every image resized to this square (None: whole images): the page says so
        "sppnet_version": __version__,
        "max_upload_bytes": max_upload,
        **(model_info or {}),
    }
    # No /docs, /redoc or /openapi.json: the service's API is the README's three routes.
    app = FastAPI(title="sppnet", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_SecurityHeaders)
    # Each request's memory is bounded (decoding limits, explain's capped overlay); this bounds how
    # many are in flight at once, so that the process's peak is a small multiple of one request's.
    busy = asyncio.Semaphore(MAX_WORKERS)

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

    def explain_answer(data: bytes, name: str) -> dict:
        from .explain import explain
        from .report import heatmap_png

        explanation = explain(predictor, data, name=name)
        out = explanation.prediction.to_dict()
        out.pop("image", None)
        out.update(sentence=explanation.prediction.sentence(), explained=explanation.class_name,
                   pyramid={str(n): shares for n, shares in explanation.pyramid.items()},
                   peak=list(explanation.peak()), heatmap_png=heatmap_png(explanation.heatmap))
        return out

    async def answer(request: Request, work):
        """Reads the upload within the limits and answers ``work(data, name)`` off the event
        loop; every bad upload is a 4xx with one line, never a traceback."""
        try:
            body = await read_body(request)
        except _TooLarge:
            return error(413, f"upload larger than the limit of {max_upload:,} bytes")
        except ClientDisconnect:  # the client went away (or timed out) mid-upload: nobody to answer
            log.info("client %s went away during its upload", request.client)
            return error(400, "incomplete upload")
        try:
            data, name = await image_bytes(request, body)
            if not data:
                raise DataError(f"{name}: empty upload, expected an image")
            async with busy:  # at most MAX_WORKERS images decoded and classified at once
                return await run_in_threadpool(work, data, name)
        except DataError as err:
            return error(400, str(err))

    def prediction(data: bytes, name: str) -> dict:
        result = predictor.predict(data, name)
        out = result.to_dict()
        out.pop("image", None)
        out["sentence"] = result.sentence()
        return out

    @app.post("/predict")
    async def predict(request: Request):
        return await answer(request, prediction)

    @app.post("/explain")
    async def explain_endpoint(request: Request):
        if not hasattr(predictor.model, "forward_features"):
            return error(400, "explaining needs a run folder's model (an ONNX file has no gradients)")
        out = await answer(request, explain_answer)
        if not isinstance(out, dict):
            return out
        png = out.pop("heatmap_png")
        if request.query_params.get("format") == "png":
            return Response(png, media_type="image/png")
        out["heatmap_png"] = base64.b64encode(png).decode("ascii")
        return out

    return app


def guarded_protocol(header_timeout: float = DEFAULT_HEADER_TIMEOUT, body_timeout: float = DEFAULT_BODY_TIMEOUT):
    """uvicorn's HTTP protocol with a deadline for each request's headers and body.

    A timer is armed whenever the connection waits for a request (on connect, and after each
    response): ``header_timeout`` seconds for the headers, then ``body_timeout`` seconds for the
    body. A connection that misses it is closed (a slow client cannot hold it open).
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    for name, value in (("header_timeout", header_timeout), ("body_timeout", body_timeout)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 3600:
            raise ConfigError(f"--{name.replace('_', '-')} must be a number of seconds in (0, 3600], got {value!r}")

    class GuardedH11Protocol(H11Protocol):
        _deadline = None
        _waiting_for = None

        def _arm(self, what: str, seconds: float) -> None:
            self._disarm()
            self._waiting_for = what
            self._deadline = self.loop.call_later(seconds, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            log.info("closing a connection from %s: its request's %s took longer than allowed",
                     self.client, self._waiting_for)
            if not self.transport.is_closing():
                self.transport.close()

        def _follow(self) -> None:
            state = self.conn.their_state
            if state is h11.SEND_BODY:
                if self._waiting_for != "body":
                    self._arm("body", body_timeout)
            elif state is h11.IDLE:
                if self._waiting_for != "headers":
                    self._arm("headers", header_timeout)
            else:  # the request is complete (or the connection is closing): the app answers it
                self._disarm()
                self._waiting_for = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm("headers", header_timeout)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._follow()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._follow()  # waiting for the next request's headers (or the rest of a body)

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return GuardedH11Protocol


#: Requests whose image is decoded, classified or explained at once (more wait their turn).
MAX_WORKERS = 2

#: The page's content security policy: its own inline script and style, images it makes itself,
#: requests to this server only, and never inside another site's frame.
PAGE_POLICY = (b"default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
               b"script-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


class _SecurityHeaders:
    """ASGI middleware: every answer is ``nosniff`` and refuses framing; the page gets a content
    security policy. (Plain ASGI, so request bodies still stream through the size limits.)"""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY")]
        if scope.get("path") == "/":
            extra.append((b"content-security-policy", PAGE_POLICY))

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def serve(predictor: Predictor, host: str = "127.0.0.1", port: int = 8000, max_upload: int = DEFAULT_MAX_UPLOAD,
          model_info: dict | None = None, log_level: str = "info", on_ready: Callable[[str], None] | None = None,
          header_timeout: float = DEFAULT_HEADER_TIMEOUT, body_timeout: float = DEFAULT_BODY_TIMEOUT,
          max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
    """Runs the service with uvicorn until interrupted.

    Args:
        header_timeout, body_timeout: seconds a request's headers, then its body, may take.
        max_connections: connections served at once; more get 503.
        on_ready: called with the URL once the address is known to be free, before serving.
    """
    app = create_app(predictor, max_upload, model_info)  # checks the serve extra is installed
    import uvicorn

    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"--port must be an integer in 0..65535, got {port!r}")
    if isinstance(max_connections, bool) or not isinstance(max_connections, int) or not 1 <= max_connections <= 100_000:
        raise ConfigError(f"--max-connections must be an integer in 1..100000, got {max_connections!r}")
    protocol = guarded_protocol(header_timeout, body_timeout)
    # Bound here and handed to uvicorn: a clear line now rather than uvicorn's log and exit, and
    # the real port (--port 0 lets the system choose) is known before serving.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
    except OSError as err:
        listener.close()
        raise ConfigError(f"--host {host} --port {port}: cannot listen there ({err.strerror or err})") from None
    port = listener.getsockname()[1]
    runtime.configure()
    if on_ready is not None:
        on_ready(f"http://{host}:{port}/")
    config = uvicorn.Config(app, log_level=log_level, access_log=True, http=protocol,
                            limit_concurrency=max_connections, timeout_keep_alive=5)
    try:
        uvicorn.Server(config).run(sockets=[listener])
    finally:
        listener.close()


def serve_run(run_dir: str | os.PathLike | None = None, onnx: str | os.PathLike | None = None,
              host: str = "127.0.0.1", port: int = 8000, max_upload_mb: float = 10.0, size: int | None = None,
              weights: str = "best", device: str = "cpu", on_ready: Callable[[str], None] | None = None,
              header_timeout: float = DEFAULT_HEADER_TIMEOUT, body_timeout: float = DEFAULT_BODY_TIMEOUT,
              max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
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
    # The temperature the probabilities are calibrated with (None: uncalibrated); already applied.
    if onnx:
        info = {"model": "onnx", "source": Path(onnx).name, "temperature": predictor.model.temperature}
    else:
        info = {"model": predictor.model.config.get("name", "model"), "source": Path(run_dir).name,
                "temperature": RunFolder(run_dir).temperature(weights)}
    serve(predictor, host, port, int(max_upload_mb * 1024 * 1024), info, on_ready=on_ready,
          header_timeout=header_timeout, body_timeout=body_timeout, max_connections=max_connections)
