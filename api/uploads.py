"""Uploads in flight per project: each may spool up to `max_upload_bytes` to disk before the
route sees it, so one project's burst of uploads could fill the disk for everyone. Past
`max_concurrent_uploads_per_project` at once, a project's next upload is answered 429 with
Retry-After before its body is read. Counted per api process (each replica its own)."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from services.errors import AlignError
from services.web import envelope

log = logging.getLogger(__name__)
RETRY_AFTER_SECONDS = 5


class UploadSlots:
    """A plain ASGI middleware on ``POST {path}``. ``project_of(secret)``: the project of a
    bearer key, or None for a key the route will refuse anyway (401, as usual)."""

    def __init__(self, app: Any, path: str, per_project: Callable[[], int],
                 project_of: Callable[[str], str | None], active: Counter[str]) -> None:
        """``active``: uploads in progress by project, kept by the caller (the app's state
        shows it)."""
        self.app, self.path = app, path
        self.per_project, self.project_of = per_project, project_of
        self.active = active

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not (scope["type"] == "http" and scope["method"] == "POST"
                and scope["path"].rstrip("/") == self.path):
            await self.app(scope, receive, send)
            return
        project = await self._project(scope)
        if project is None:
            await self.app(scope, receive, send)
            return
        limit = self.per_project()
        if self.active[project] >= limit:
            response = envelope(429, f"this project has {limit} uploads in progress, the most "
                                "it may have at once; retry when one has finished",
                                "rate_limit_error", param="file", code="too_many_uploads")
            response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
            response.headers["Connection"] = "close"  # its body is not read
            await response(scope, receive, send)
            return
        self.active[project] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active[project] -= 1
            if not self.active[project]:
                del self.active[project]

    async def _project(self, scope: dict[str, Any]) -> str | None:
        authorization = dict(scope.get("headers", [])).get(b"authorization", b"")
        scheme, _, secret = authorization.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            return None
        try:
            return await asyncio.to_thread(self.project_of, secret.strip())
        except AlignError:  # unknown or revoked: the route answers 401
            return None
        except Exception:  # PostgreSQL away: the route answers it as it answers any request
            log.warning("could not count an upload against its project", exc_info=True)
            return None
