"""`services.auth.KeyCache`: API key → project on the services' request path, against the real
database, each answer kept for its time-to-live."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import update

from services.auth import KeyCache
from services.db.engine import session_factory, session_scope
from services.db.models import ApiKey, Project
from services.errors import Unauthorized
from services.security import generate_key, hash_key


def make_key(database_url: str) -> tuple[str, str, str]:
    """A new project and key: (project id, key id, secret)."""
    tag = uuid.uuid4().hex[:8]
    project, key_id, secret = f"p-{tag}", f"k-{tag}", generate_key()
    with session_scope(session_factory(database_url)) as session:
        session.add(Project(id=project, name=project))
        session.flush()
        session.add(ApiKey(id=key_id, project_id=project, name="test", key_hash=hash_key(secret),
                           prefix=secret[:12]))
    return project, key_id, secret


def revoke(database_url: str, key_id: str) -> None:
    with session_scope(session_factory(database_url)) as session:
        session.execute(update(ApiKey).where(ApiKey.id == key_id)
                        .values(revoked_at=datetime.now(UTC)))


def test_a_key_is_read_once_per_interval_and_a_revoked_key_ends_with_it(
        database_url: str) -> None:
    """On the cache's own clock (a busy machine's pauses cannot move it): read at 0, trusted
    until 0.5 though revoked meanwhile, read again and refused after."""
    project, key_id, secret = make_key(database_url)
    now = [100.0]
    keys = KeyCache(session_factory(database_url), ttl=0.5, clock=lambda: now[0])
    assert project_of(keys, secret) == project
    revoke(database_url, key_id)
    now[0] += 0.49
    assert project_of(keys, secret) == project  # still trusted within the interval
    now[0] += 0.02
    with pytest.raises(Unauthorized, match="invalid API key"):
        project_of(keys, secret)


def test_missing_and_unknown_keys_are_refused_every_time(database_url: str) -> None:
    keys = KeyCache(session_factory(database_url), ttl=60)
    with pytest.raises(Unauthorized, match="missing API key"):
        project_of(keys, None)
    unknown = generate_key()
    for _ in range(2):
        with pytest.raises(Unauthorized, match="invalid API key"):
            project_of(keys, unknown)
    _, _, secret = make_key(database_url)  # nothing about a key is remembered before it exists
    assert project_of(keys, secret)


def project_of(keys: KeyCache, secret: str | None) -> str:
    """The project the cache says ``secret`` belongs to."""
    return asyncio.run(keys.caller(secret)).project_id
