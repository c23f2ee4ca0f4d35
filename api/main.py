"""The orchestration service: files, jobs, events, metrics, checkpoints, models, keys, and
the dashboard over them."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.routes import admin, files, jobs, metrics, models, ui
from api.state import ApiState
from api.uploads import UploadSlots
from services.auth import caller_for_key
from services.db.engine import ping, session_scope
from services.settings import ApiSettings
from services.web import (
    BodyLimit,
    health_router,
    install_error_handlers,
    observe_requests,
    run_server,
    service_app,
)

UPLOAD_FRAMING_BYTES = 64 * 1024
"""What multipart framing may add to an upload's file (boundaries, part headers, the purpose)."""


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or ApiSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.alignd = await asyncio.to_thread(ApiState.build, settings)
        yield

    async def readiness() -> dict[str, str]:
        state: ApiState = app.state.alignd
        return {"database": await asyncio.to_thread(_check, lambda: ping(state.database_url)),
                "broker": await asyncio.to_thread(_check, lambda: _ping_broker(state))}

    app = service_app(title="alignd api", version="0.1.0", lifespan=lifespan,
                      description="Fine-tuning jobs, files and models (OpenAI-compatible shapes).")
    install_error_handlers(app)
    # Multipart framing adds a little to the file itself; the route checks the file's size.
    app.add_middleware(BodyLimit, prefix="/v1/files",
                       limit=lambda: settings.max_upload_bytes + UPLOAD_FRAMING_BYTES)

    def project_of(secret: str) -> str:
        with session_scope(app.state.alignd.sessions) as session:
            return caller_for_key(session, secret).project_id

    app.state.uploads_in_progress = Counter()  # by project
    app.add_middleware(UploadSlots, path="/v1/files", project_of=project_of,
                       per_project=lambda: settings.max_concurrent_uploads_per_project,
                       active=app.state.uploads_in_progress)
    app.include_router(health_router(readiness))
    for module in (files, jobs, models, admin, ui, metrics):
        app.include_router(module.router)
    observe_requests(app)
    return app


def _check(probe: object) -> str:
    try:
        probe()  # type: ignore[operator]
        return "ok"
    except Exception as exc:  # noqa: BLE001 - readiness reports, never raises
        return f"unreachable ({type(exc).__name__})"


def _ping_broker(state: ApiState) -> None:
    with state.celery.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)


def serve(settings: ApiSettings | None = None) -> None:
    settings = settings or ApiSettings()
    run_server(create_app(settings), settings)
