"""Who is calling: an API key (Authorization: Bearer) to its project, for every service."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.db.models import ApiKey
from services.errors import Unauthorized
from services.security import hash_key


def project_for_key(session: Session, secret: str | None) -> str:
    """The project a key belongs to; Unauthorized for a missing, unknown or revoked key."""
    if not secret:
        raise Unauthorized("missing API key; send Authorization: Bearer <key>",
                           code="missing_api_key")
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(secret)))
    if key is None or key.revoked_at is not None:
        raise Unauthorized("invalid API key", code="invalid_api_key")
    return key.project_id
