"""The generation service's app. Health routes only for now; /v1/chat/completions comes later."""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI

from services.settings import InferenceSettings
from services.web import health_router, install_error_handlers


def create_app(settings: InferenceSettings | None = None) -> FastAPI:
    settings = settings or InferenceSettings()
    app = FastAPI(title="alignd inference", version="0.1.0")
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(health_router())
    return app


def serve(settings: InferenceSettings | None = None) -> None:
    settings = settings or InferenceSettings()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level=settings.log_level.lower())
