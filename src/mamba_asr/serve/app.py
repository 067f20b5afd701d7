"""The ASGI application (Starlette) and the server (uvicorn) of ``mamba-asr serve``.

Routes: ``GET /`` the page (``static/index.html``), ``GET /health``, ``GET /v1/models``,
``POST /v1/audio/transcriptions`` (``mamba_asr.serve.openai_api``) and the WebSocket
``/v1/stream`` (``mamba_asr.serve.protocol``), whose streams the ``Scheduler`` decodes
together. With a token, every route but ``/``, ``/static`` and ``/health`` needs
``Authorization: Bearer TOKEN`` (a WebSocket may give ``?token=TOKEN`` instead, as a browser
cannot set headers on one).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import math
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from mamba_asr import __version__
from mamba_asr.serve.engine import Engine
from mamba_asr.serve.openai_api import (
    ApiError,
    check_fields,
    error_body,
    read_upload,
    render,
    sse_events,
)
from mamba_asr.serve.protocol import (
    CLOSE_POLICY,
    AudioFormat,
    ProtocolError,
    audio_format,
    close_reason,
    control,
    parse_text,
    samples_of,
)
from mamba_asr.serve.scheduler import Close, Scheduler, Slot

__all__ = ["ServeConfig", "create_app", "run"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeConfig:
    """The server's settings (``mamba-asr serve`` options)."""

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    no_auth: bool = False
    max_streams: int = 32
    max_upload_mb: float = 25.0
    max_message_kb: int = 1024
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    deadline_ms: float = 10.0
    idle_timeout_s: float = 60.0
    max_batch: int | None = None
    worker: str = "thread"  # "process": the model step in a process of its own

    def __post_init__(self) -> None:
        if self.token is not None and not self.token.strip():
            raise ValueError("--token must not be empty")
        if self.token is not None and self.no_auth:
            raise ValueError("give --token or --no-auth, not both")
        if not is_loopback(self.host) and self.token is None and not self.no_auth:
            raise ValueError(
                f"--host {self.host} is reachable from other machines: give --token TOKEN "
                "(clients send 'Authorization: Bearer TOKEN') or --no-auth to allow anyone"
            )
        for name in ("max_streams", "max_message_kb"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if not (math.isfinite(self.max_upload_mb) and self.max_upload_mb > 0):
            raise ValueError(f"--max-upload-mb must be > 0, got {self.max_upload_mb}")
        if self.worker not in ("thread", "process"):
            raise ValueError(f"--worker must be thread or process, got {self.worker!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"--port must be in 1..65535, got {self.port}")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Server:
    """The state behind the routes: the engine, the scheduler and the executor of uploads."""

    def __init__(self, engine: Engine, config: ServeConfig) -> None:
        self.engine, self.config = engine, config
        if config.worker == "process" and engine.onnx:
            raise ValueError("--worker process needs a PyTorch model (not --onnx)")
        self.scheduler = Scheduler(
            engine, config.max_streams, config.deadline_ms, config.max_batch,
            process=config.worker == "process",
        )  # fmt: skip
        self.files = ThreadPoolExecutor(1, thread_name_prefix="mamba-asr-files")
        self.started = time.time()

    # --- auth -----------------------------------------------------------------------------

    def authorized(self, headers: Any, query: Any = None) -> bool:
        if self.config.token is None:
            return True
        given = headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        token = value.strip() if scheme.lower() == "bearer" else ""
        if not token and query is not None:
            token = query.get("token", "")
        return hmac.compare_digest(token.encode(), self.config.token.encode())

    # --- HTTP -----------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return JSONResponse({
            "status": "draining" if self.scheduler.stopping else "ok",
            "model": self.engine.name, "streams": len(self.scheduler.slots),
            "max_streams": self.config.max_streams, "version": __version__,
            "steps": self.scheduler.steps, "largest_batch": self.scheduler.largest_batch,
        })  # fmt: skip

    async def models(self, request: Request) -> Response:
        self._check_auth(request)
        return JSONResponse({"object": "list", "data": [{
            "id": self.engine.name, "object": "model", "created": int(self.started),
            "owned_by": "mamba-asr",
        }]})  # fmt: skip

    def _check_auth(self, request: Request) -> None:
        if not self.authorized(request.headers):
            raise ApiError("missing or wrong API token (Authorization: Bearer TOKEN)", 401,
                           code="invalid_api_key")  # fmt: skip

    async def transcriptions(self, request: Request) -> Response:
        self._check_auth(request)
        limit = int(self.config.max_upload_mb * 1024 * 1024)
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > limit:
            raise _too_large(self.config.max_upload_mb)
        try:
            async with _limited(request, limit).form(max_files=1, max_fields=32) as form:
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    raise ApiError("the form needs a 'file' field with the audio", param="file")
                fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
                grains = form.getlist("timestamp_granularities[]")
                fields["timestamp_granularities[]"] = [g for g in grains if isinstance(g, str)]
                data, name = await upload.read(), upload.filename or "file"
        except _TooLarge:
            raise _too_large(self.config.max_upload_mb) from None
        fmt, grains, stream = check_fields(fields)
        loop = asyncio.get_running_loop()
        wave, rate = await loop.run_in_executor(self.files, read_upload, data, name)
        if stream:
            parts = self.engine.segments(wave, rate)
            return StreamingResponse(self._pump(parts), media_type="text/event-stream")
        try:
            transcript = await loop.run_in_executor(self.files, self.engine.transcribe, wave, rate)
        except ValueError as exc:
            raise ApiError(str(exc), param="file") from None
        body, media = render(transcript, fmt, grains)
        return Response(body, media_type=media)

    async def _pump(self, parts: Iterator[Any]) -> AsyncIterator[str]:
        """The server-sent events of ``parts``, each decoded in the upload executor."""
        loop = asyncio.get_running_loop()
        events = sse_events(parts)
        while True:
            event = await loop.run_in_executor(self.files, next, events, None)
            if event is None:
                return
            yield event

    # --- WebSocket ------------------------------------------------------------------------

    async def stream(self, ws: WebSocket) -> None:
        await ws.accept()
        if not self.authorized(ws.headers, ws.query_params):
            await _close(ws, CLOSE_POLICY, "missing or wrong token (Authorization: Bearer "
                         "TOKEN, or ?token=TOKEN)")  # fmt: skip
            return
        if not self.engine.streaming:
            await _close(ws, CLOSE_POLICY, f"model {self.engine.name} does not stream: send the "
                         "audio to POST /v1/audio/transcriptions")  # fmt: skip
            return
        slot: Slot | None = None
        sender: asyncio.Task[None] | None = None
        try:
            slot = self.scheduler.open(AudioFormat())  # refused at once when full
            first = await self._receive(ws)
            if first.get("text") is not None:
                data = parse_text(first["text"])
                if data["type"] == "config":
                    slot.fmt, first = audio_format(data), None
            fmt = slot.fmt
            await ws.send_text(control("ready", sample_rate=fmt.sample_rate, format=fmt.format))
            sender = asyncio.create_task(_send_loop(ws, slot))
            reader = asyncio.create_task(self._read_loop(ws, slot, fmt, first))
            await asyncio.wait({sender, reader}, return_when=asyncio.FIRST_COMPLETED)
            if reader.done() and not reader.cancelled() and reader.exception() is not None:
                raise reader.exception()  # type: ignore[misc]
            reader.cancel()  # the sender closed the connection, or the client went away
        except ProtocolError as exc:
            if sender is not None:
                sender.cancel()
            with contextlib.suppress(Exception):
                await ws.send_text(control("error", message=str(exc)))
            await _close(ws, exc.code, str(exc))
        except WebSocketDisconnect:
            pass
        finally:
            if sender is not None:
                sender.cancel()
            if slot is not None:
                self.scheduler.release(slot)

    async def _receive(self, ws: WebSocket) -> dict[str, Any]:
        """The client's next message; a ``ProtocolError`` after ``idle_timeout_s`` of silence
        (an idle client must not hold a stream forever)."""
        try:
            return await asyncio.wait_for(ws.receive(), self.config.idle_timeout_s)
        except TimeoutError:
            raise ProtocolError(
                f"nothing received for {self.config.idle_timeout_s:g} s", CLOSE_POLICY
            ) from None

    async def _read_loop(
        self, ws: WebSocket, slot: Slot, fmt: AudioFormat, first: dict[str, Any] | None
    ) -> None:
        """The client's messages until ``end`` or a disconnect; a ``ProtocolError`` for a bad
        one."""
        while True:
            msg = first if first is not None else await self._receive(ws)
            first = None
            if msg["type"] == "websocket.disconnect":
                return
            if msg.get("bytes") is not None:
                await self.scheduler.feed(slot, samples_of(msg["bytes"], fmt))
            elif msg.get("text") is not None:
                data = parse_text(msg["text"])
                if data["type"] == "config":
                    raise ProtocolError("a config message must come first, before any audio")
                self.scheduler.end(slot)
                while (await ws.receive())["type"] != "websocket.disconnect":
                    pass  # after end: nothing more is read
                return


class _TooLarge(Exception):
    pass


def _too_large(mb: float) -> ApiError:
    return ApiError(f"the upload is larger than {mb:g} MB (--max-upload-mb)", 413,
                    param="file", code="file_too_large")  # fmt: skip


def _limited(request: Request, limit: int) -> Request:
    """``request`` whose body raises ``_TooLarge`` past ``limit`` bytes."""
    total = 0
    receive = request.receive

    async def counted() -> Any:
        nonlocal total
        message = await receive()
        if message["type"] == "http.request":
            total += len(message.get("body", b""))
            if total > limit:
                raise _TooLarge()
        return message

    return Request(request.scope, counted)


async def _send_loop(ws: WebSocket, slot: Slot) -> None:
    """Send ``slot``'s messages in order; a ``Close`` ends the connection."""
    while True:
        item = await slot.out.get()
        if isinstance(item, Close):
            await _close(ws, item.code, item.reason)
            return
        try:
            await ws.send_text(item)
        except Exception:  # the client went away; the reader sees it too
            return


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    if ws.application_state == WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(code, close_reason(reason)), 5.0)


async def _api_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ApiError):
        return JSONResponse(error_body(str(exc), exc.param, exc.code), exc.status)
    assert isinstance(exc, HTTPException)
    return JSONResponse(error_body(str(exc.detail)), exc.status_code)


def create_app(engine: Engine, config: ServeConfig | None = None) -> Starlette:
    """The ASGI app serving ``engine`` (see the module docstring)."""
    config = config or ServeConfig()
    server = Server(engine, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await server.scheduler.start()
        yield
        await server.scheduler.drain()
        await server.scheduler.stop()
        server.files.shutdown(wait=False, cancel_futures=True)

    middleware = []
    if config.cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(config.cors_origins),
                                     allow_methods=["GET", "POST"],
                                     allow_headers=["Authorization", "Content-Type"]))  # fmt: skip
    routes = [
        Route("/", _page),
        Route("/health", server.health),
        Route("/v1/models", server.models),
        Route("/v1/audio/transcriptions", server.transcriptions, methods=["POST"]),
        WebSocketRoute("/v1/stream", server.stream),
        Mount("/static", StaticFiles(packages=[("mamba_asr.serve", "static")]), name="static"),
    ]
    app = Starlette(
        routes=routes, middleware=middleware, lifespan=lifespan,
        exception_handlers={ApiError: _api_error, HTTPException: _api_error},
    )  # fmt: skip
    app.state.server = server
    return app


async def _page(request: Request) -> Response:
    from importlib.resources import files

    html = files("mamba_asr.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    return Response(html, media_type="text/html; charset=utf-8")


def run(engine: Engine, config: ServeConfig) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM); on the way out, every open stream gets its
    finals and ``done`` before its connection closes (1001)."""
    import uvicorn

    app = create_app(engine, config)

    class _Server(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            await app.state.server.scheduler.drain()
            await super().shutdown(sockets)

    uconfig = uvicorn.Config(
        app, host=config.host, port=config.port, ws_max_size=config.max_message_kb * 1024,
        log_level="info", timeout_graceful_shutdown=10, lifespan="on",
        ws_per_message_deflate=False,  # audio does not deflate: it would cost CPU per packet
    )  # fmt: skip
    _Server(uconfig).run()
