"""The generation service's app: OpenAI-compatible completions and chat (streaming too) on the
torch or vLLM engine, with VAS and best-of-N; models, health, readiness and metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, Request, Response

from inference import routes
from inference.engines.base import Engine
from inference.state import InferenceState
from services.settings import InferenceSettings
from services.web import database_readiness, health_router, install_error_handlers

ENDPOINTS = {"/v1/completions": "completions", "/v1/chat/completions": "chat"}


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

    app = FastAPI(title="alignd inference", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible generation with Value Augmented Sampling "
                              "and best-of-N.")
    install_error_handlers(app)
    app.include_router(health_router(database_readiness(lambda: app.state.alignd.database_url)))
    app.include_router(routes.router)

    @app.middleware("http")
    async def count_requests(request: Request,
                             call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        endpoint = ENDPOINTS.get(request.url.path)
        started = time.perf_counter()
        response = await call_next(request)
        if endpoint is not None:
            metrics = app.state.alignd.metrics
            metrics.requests.labels(endpoint, str(response.status_code)).inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    return app


def serve(settings: InferenceSettings | None = None) -> None:
    settings = settings or InferenceSettings()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level=settings.log_level.lower())
