"""The reward scoring service's app: /v1/score (reward models, ensembles), /v1/reward_models,
health, readiness (the database answers) and Prometheus metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from reward_service import routes
from reward_service.state import RewardState
from services.settings import RewardSettings
from services.web import (
    database_readiness,
    health_router,
    install_error_handlers,
    observe_requests,
    run_server,
    service_app,
)


def create_app(settings: RewardSettings | None = None) -> FastAPI:
    settings = settings or RewardSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await asyncio.to_thread(RewardState.build, settings)
        app.state.alignd = state
        yield
        if state.listener is not None:
            state.listener.stop()
        await state.cache.close()
        state.scorer.context.grading.close()

    app = service_app(title="alignd reward service", version="0.1.0", lifespan=lifespan,
                      description="Scores (prompt, response) items with reward models and ensembles.")
    # It stores nothing from a request: the responses it scores are models' text, NUL included.
    install_error_handlers(app, refuse_nul_in_json=False)
    app.include_router(health_router(database_readiness(lambda: app.state.alignd.database_url)))
    app.include_router(routes.router)
    observe_requests(app)
    return app


def serve(settings: RewardSettings | None = None) -> None:
    settings = settings or RewardSettings()
    run_server(create_app(settings), settings)
