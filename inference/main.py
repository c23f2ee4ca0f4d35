"""The generation service's app: OpenAI-compatible completions and chat (streaming too) on the
torch or vLLM engine, with VAS and best-of-N; models, health, readiness and metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference import routes
from inference.engines.base import Engine
from inference.metrics import InferenceMetrics
from inference.state import InferenceState
from services.settings import InferenceSettings
from services.web import (
    database_readiness,
    health_router,
    install_error_handlers,
    observe_requests,
    run_server,
    service_app,
)

ENDPOINTS = {"/v1/completions": "completions", "/v1/chat/completions": "chat"}


class RequestMetrics:
    """Counts and times the generation endpoints, streams to their last byte.

    A plain ASGI middleware: Starlette's ``@app.middleware("http")`` would relay every
    server-sent event of a stream through a task and a memory stream of its own.
    """

    def __init__(self, app: ASGIApp, metrics: Callable[[], InferenceMetrics]):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = ENDPOINTS.get(scope["path"]) if scope["type"] == "http" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            metrics = self.metrics()
            metrics.requests.labels(endpoint, str(status)).inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


def create_app(settings: InferenceSettings | None = None, engine: Engine | None = None) -> FastAPI:
    """``engine`` replaces the one `settings.engine` names (tests share one across apps)."""
    settings = settings or InferenceSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await asyncio.to_thread(InferenceState.build, settings, engine)
        app.state.alignd = state
        yield
        if engine is None:
            await state.close()
        else:
            await state.rewards.aclose()

    app = service_app(title="alignd inference", version="0.1.0", lifespan=lifespan,
                      description="OpenAI-compatible generation with Value Augmented Sampling "
                                  "and best-of-N.")
    # It stores nothing from a request: prompts and chats may hold what models wrote, NUL
    # included.
    install_error_handlers(app, refuse_nul_in_json=False)
    app.include_router(health_router(database_readiness(lambda: app.state.alignd.database_url)))
    app.include_router(routes.router)

    app.add_middleware(RequestMetrics, metrics=lambda: app.state.alignd.metrics)
    observe_requests(app)
    return app


def serve(settings: InferenceSettings | None = None) -> None:
    settings = settings or InferenceSettings()
    run_server(create_app(settings), settings)
