"""Who is calling: an API key (Authorization: Bearer) to its project, for every service."""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.db.engine import session_scope
from services.db.models import ApiKey
from services.errors import Unauthorized
from services.security import hash_key

KEY_CACHE_SECONDS = 5.0
"""How long the scoring and generation services trust a key → project answer."""
KEY_CACHE_ENTRIES = 10_000


def project_for_key(session: Session, secret: str | None) -> str:
    """The project a key belongs to; Unauthorized for a missing, unknown or revoked key."""
    if not secret:
        raise Unauthorized("missing API key; send Authorization: Bearer <key>",
                           code="missing_api_key")
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(secret)))
    if key is None or key.revoked_at is not None:
        raise Unauthorized("invalid API key", code="invalid_api_key")
    return key.project_id


class KeyCache:
    """`project_for_key` for a service's request path, each answer kept `ttl` seconds: a busy
    service reads the database once per key per interval rather than once per request. A key
    revoked meanwhile is refused by that service within `ttl` seconds. Unknown keys are never
    remembered."""

    def __init__(self, sessions: sessionmaker[Session], ttl: float = KEY_CACHE_SECONDS):
        self._sessions, self._ttl = sessions, ttl
        self._known: dict[str, tuple[str, float]] = {}
        """hash of the key → (its project, when that was read)."""

    async def project(self, secret: str | None) -> str:
        digest = hash_key(secret) if secret else None
        known = self._known.get(digest) if digest else None
        if known is not None and time.monotonic() - known[1] < self._ttl:
            return known[0]
        project = await asyncio.to_thread(self._lookup, secret)
        if len(self._known) >= KEY_CACHE_ENTRIES:
            self._known.clear()
        assert digest is not None  # a missing key was refused by the lookup
        self._known[digest] = (project, time.monotonic())
        return project

    def _lookup(self, secret: str | None) -> str:
        with session_scope(self._sessions) as session:
            return project_for_key(session, secret)
