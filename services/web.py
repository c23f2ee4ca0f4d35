"""What every alignd FastAPI app shares: the error envelope, its OpenAPI declaration, the
health routes, and the request id and request metrics on every request. Imported only by the
service apps (FastAPI lives in the [api] extra)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Self

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import BaseModel
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.errors import AlignError
from services.observability import (
    REQUEST_ID_HEADER,
    accepted_request_id,
    current_request_id,
    metrics_readable,
    metrics_refusal,
    new_request_id,
    set_request_id,
)

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorEnvelope(BaseModel):
    error: ErrorBody


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorEnvelope, "description": description}
    for status, description in {
        400: "Invalid request",
        401: "Missing or wrong API key",
        403: "The API key lacks the scope this needs, or the object may not be changed",
        404: "No such object in this project",
        409: "The object's state does not allow this",
        413: "Upload too large",
        429: "Too many requests; retry after the Retry-After header's seconds",
        503: "A dependency is unavailable",
    }.items()
}


def service_app(**settings: Any) -> FastAPI:
    """A service's FastAPI app whose /docs (Swagger UI) and /redoc pages load their scripts,
    stylesheet and icon from the service itself (under /static-offline-docs), never from a
    CDN: alignd often runs on clusters with no way out. The released assets ship in the
    fastapi-offline package, so nothing is fetched at run time either."""
    from fastapi_offline import FastAPIOffline

    return FastAPIOffline(**settings)


def envelope(status: int, message: str, error_type: str, param: str | None = None,
             code: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return JSONResponse(status_code=status, content=body)


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def _validation_message(exc: RequestValidationError) -> tuple[str, str]:
    first = exc.errors()[0]
    param = _location(tuple(first.get("loc", ())))
    message = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden":
        message = "unknown field"
    if "input" in first and first.get("type") not in ("missing", "extra_forbidden"):
        message = f"{message}, got {_shown(first['input'])}"
    return param, f"{param}: {message}"


ECHOED_CHARS = 120
"""How much of a refused value an error message repeats (a 20 MB name is not echoed back)."""


def _shown(value: Any) -> str:
    text = repr(value)
    if len(text) <= ECHOED_CHARS:
        return text
    return f"{text[:ECHOED_CHARS]}… ({len(text):,} characters)"


_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
"""A JSON escape of U+0000: ``\\u0000`` after an even number of backslashes."""


class RefuseNulBytes:
    """A plain ASGI middleware: a request whose path, query string or (with ``json_bodies``)
    JSON body holds a NUL character gets a 400 before any route sees it. PostgreSQL's text and
    jsonb cannot store U+0000, so such a value would otherwise fail deep in a query as a 500.

    A JSON body is read whole to be checked (the route reads it whole anyway) and handed on
    unchanged; other bodies (uploads) pass untouched."""

    def __init__(self, app: Any, json_bodies: bool = True) -> None:
        self.app, self.json_bodies = app, json_bodies

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        query = scope.get("query_string", b"").lower()
        if "\x00" in scope.get("path", "") or b"%00" in query or b"\x00" in query:
            await _refuse(scope, receive, send, "the URL")
            return
        headers = dict(scope.get("headers", []))
        if not self.json_bodies or b"json" not in headers.get(b"content-type", b"").lower():
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if b"\x00" in body or _JSON_NUL.search(body):
            await _refuse(scope, receive, send, "the JSON body")
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return dict(await receive())
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class BodyLimit:
    """A plain ASGI middleware: a request body to a route under ``prefix`` is read no further
    than ``limit`` bytes, whether it came with a Content-Length or chunked, and answered with a
    413. Uploads were spooled whole to disk (574 MiB of a 600 MiB upload) before the route
    could look at their size."""

    def __init__(self, app: Any, limit: Callable[[], int], prefix: str) -> None:
        self.app, self.limit, self.prefix = app, limit, prefix

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        limit = self.limit()
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(scope, receive, send, int(declared), limit)
            return
        received, refused, responded = 0, False, False

        async def limited() -> dict[str, Any]:
            nonlocal received, refused
            message = dict(await receive())
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True  # the app sees the client leave and stops reading
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: dict[str, Any]) -> None:
            nonlocal responded
            if refused:
                return  # the app's own answer to that "disconnect" is not sent
            responded = responded or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, guarded)
        except Exception:
            if not refused:
                raise
        if refused and not responded:
            await _too_large(scope, receive, send, received, limit)


async def _too_large(scope: dict[str, Any], receive: Any, send: Any, size: int,
                     limit: int) -> None:
    response = envelope(413, f"the request body is over the limit of {limit} bytes (at "
                        f"least {size} arrived); upload a smaller file",
                        "invalid_request_error", param="file", code="payload_too_large")
    response.headers["Connection"] = "close"  # the server stops reading the rest of it
    await response(scope, receive, send)


async def _refuse(scope: dict[str, Any], receive: Any, send: Any, where: str) -> None:
    response = envelope(400, f"{where} holds a NUL character (U+0000), which alignd does not "
                        "accept in ids, names or text", "invalid_request_error",
                        code="nul_character")
    await response(scope, receive, send)


def install_error_handlers(app: FastAPI, *, refuse_nul_in_json: bool = True) -> None:
    """The error envelope for every error, and NUL characters refused at the edge: in URLs
    always, in JSON bodies unless ``refuse_nul_in_json`` is False. A service that stores no
    request text passes False: the text it takes is a model's (prompts, responses, chats),
    which may hold any character (`services.text`), and its ids are checked field by field
    (`services.text.Identifier`)."""
    app.add_middleware(RefuseNulBytes, json_bodies=refuse_nul_in_json)

    @app.exception_handler(AlignError)
    async def _domain(request: Request, exc: AlignError) -> JSONResponse:
        retry_after = getattr(exc, "retry_after", None)
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        return JSONResponse(status_code=exc.status_code, content=exc.envelope(),
                            headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        param, message = _validation_message(exc)
        return envelope(400, message, "invalid_request_error", param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        response = envelope(exc.status_code, str(exc.detail), kind)
        response.headers.update(exc.headers or {})  # a 405's Allow among them
        return response

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database(request: Request, exc: Exception) -> JSONResponse:
        # The connection pool pings before it lends a connection, so once the database is
        # back the next request reconnects.
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path,
                    str(exc).splitlines()[0][:200])
        response = envelope(503, "the database is unavailable; retry shortly",
                            "service_unavailable", code="database_unavailable")
        response.headers["Retry-After"] = "5"
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        response = envelope(500, "internal server error", "server_error")
        # Starlette answers a 500 outside every middleware, `ObserveRequests` among them.
        request_id = current_request_id()
        if request_id:
            response.headers[REQUEST_ID_HEADER] = request_id
        return response


HTTP_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class HttpMetrics:
    """A service's requests by method, route template and status, and their latency (a
    stream until its last byte). The route is the template (`/v1/fine_tuning/jobs/{job_id}`),
    never the path: one series per route, whatever ids clients send."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("alignd_http_requests", "HTTP requests by method, route "
                                "template and status", ["method", "route", "status"],
                                registry=registry)
        self.seconds = Histogram("alignd_http_request_seconds", "HTTP request latency by "
                                 "method and route template", ["method", "route"],
                                 buckets=HTTP_SECONDS, registry=registry)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.seconds.labels(method, route).observe(seconds)


UNMATCHED_ROUTE = "<unmatched>"
"""The route label of a request no route matched (a 404 on an unknown path)."""


class ObserveRequests:
    """A plain ASGI middleware, the outermost of an app's (Starlette's
    ``@app.middleware("http")`` would relay every event of a stream through a task of its
    own): it gives each request its id (a client's valid ``X-Request-ID``, else a new one),
    binds it for the request's logs and the calls it makes, echoes it on the response, and
    counts and times the request by route template and status."""

    def __init__(self, app: Any, metrics: Callable[[], HttpMetrics | None]) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers", [])).get(REQUEST_ID_HEADER.lower().encode())
        request_id = accepted_request_id(given.decode("latin-1") if given else None)
        request_id = request_id or new_request_id()
        # Bound for the rest of the request's own task (uvicorn runs each request in one), so
        # the 500 handler, which Starlette runs outside this middleware, still sees it.
        set_request_id(request_id)
        started, status = time.perf_counter(), 500

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            metrics = self.metrics()
            if metrics is not None:
                route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
                metrics.observe(scope["method"], route, status, time.perf_counter() - started)


def observe_requests(app: FastAPI) -> None:
    """Add `ObserveRequests`, counting into the `HttpMetrics` at ``app.state.alignd.metrics.
    http`` (every service's state has one). Call it after every other middleware, so that it
    is outermost and their answers (a 413, a NUL character's 400) carry the id and count."""
    def metrics() -> HttpMetrics | None:
        state = getattr(app.state, "alignd", None)  # built in the app's lifespan
        return state.metrics.http if state is not None else None

    app.add_middleware(ObserveRequests, metrics=metrics)


def metrics_access(request: Request, settings: Any) -> None:
    """/metrics is open to `settings.metrics_networks`; from elsewhere it needs the admin key
    (Forbidden otherwise: the counters tell model ids, traffic and load)."""
    client = request.client.host if request.client else None
    if not metrics_readable(client, request.headers.get("authorization", ""),
                            settings.metrics_networks, settings.admin_key.get_secret_value()):
        raise metrics_refusal(settings.metrics_networks)


ReadinessCheck = Callable[[], Awaitable[dict[str, str]]]


def database_readiness(database_url: Callable[[], str]) -> ReadinessCheck:
    """A readiness check reporting whether the app's database answers a ping."""
    async def readiness() -> dict[str, str]:
        import asyncio

        from services.db.engine import ping

        try:
            await asyncio.to_thread(ping, database_url())
            return {"database": "ok"}
        except Exception as exc:  # noqa: BLE001 - readiness reports, never raises
            return {"database": f"unreachable ({type(exc).__name__})"}
    return readiness


def health_router(readiness: ReadinessCheck | None = None) -> APIRouter:
    """/healthz: the process answers. /readyz: its dependencies answer too (503 otherwise)."""
    router = APIRouter(tags=["health"])

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", responses={503: ERROR_RESPONSES[503]})
    async def readyz() -> JSONResponse:
        checks = await readiness() if readiness else {}
        failing = {name: state for name, state in checks.items() if state != "ok"}
        if failing:
            detail = ", ".join(f"{name}: {state}" for name, state in failing.items())
            return envelope(503, f"not ready: {detail}", "service_unavailable")
        return JSONResponse({"status": "ok", "checks": checks})

    return router


def run_server(app: FastAPI, settings: Any) -> None:
    """Serve ``app`` on ``settings.host``:``settings.port`` until stopped, logging as
    ``ALIGND_LOG_LEVEL`` and ``ALIGND_LOG_FORMAT`` say (uvicorn's own lines included)."""
    import uvicorn

    from services.observability import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    uvicorn.run(app, host=settings.host, port=settings.port,
                log_level=settings.log_level.lower(), log_config=None,
                **proxy_options(settings))


def proxy_options(settings: Any) -> dict[str, Any]:
    """uvicorn's handling of X-Forwarded-For/-Proto: believed only from the addresses in
    ``settings.trusted_proxies`` (none by default; uvicorn's own default believes any
    loopback peer, which lets a local client claim any address)."""
    trusted = list(settings.trusted_proxies)
    return {"proxy_headers": bool(trusted), "forwarded_allow_ips": trusted or None}


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerThread:
    """An ASGI app under a real uvicorn server on a loopback port, in a thread of this process
    (tests and benchmarks drive it over HTTP like any client)."""

    def __init__(self, app: Any, port: int | None = None, log_level: str = "warning",
                 **options: Any):
        """``options``: more of uvicorn.Config's (`proxy_options`)."""
        import threading

        import uvicorn

        self.port = port or free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level=log_level, **options))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        import time

        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start; see its log above")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
