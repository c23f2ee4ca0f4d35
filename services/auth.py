"""Who is calling: an API key (Authorization: Bearer) to its project and scopes, for every
service (how often a key may call: `services.rate_limit`).

Scopes (`services.db.models.KEY_SCOPES`): `read` (the api's GET routes), `train` (uploading and deleting files, creating and
cancelling jobs, deleting models), `generate` (the inference service), `score` (the reward
service) and `admin` (creating and revoking its own project's keys). A key is made with any of
them; all but `admin` by default. The operator's admin key is not a project key: it has every
right, creating projects among them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.db.engine import session_scope
from services.db.models import ApiKey
from services.errors import Forbidden, Unauthorized
from services.security import hash_key

KEY_CACHE_SECONDS = 5.0
"""The default time-to-live of `KeyCache` entries (ALIGND_KEY_CACHE_SECONDS): revocations are
also published at once (`services.invalidation`); this bounds a missed notification."""
"""How long the scoring and generation services trust a key → project answer."""
KEY_CACHE_ENTRIES = 10_000


@dataclass(frozen=True)
class Caller:
    """A project's key, as a request presents it."""

    project_id: str
    key_id: str
    scopes: frozenset[str]

    def require(self, scope: str) -> Caller:
        """Itself, if the key has ``scope``; Forbidden otherwise."""
        if scope not in self.scopes:
            raise Forbidden(f"this API key lacks the {scope!r} scope (it has: "
                            f"{', '.join(sorted(self.scopes)) or 'none'}); ask your operator "
                            f"for a key with it", code="missing_scope")
        return self


def caller_for_key(session: Session, secret: str | None) -> Caller:
    """The key's project and scopes; Unauthorized for a missing, unknown or revoked key."""
    if not secret:
        raise Unauthorized("missing API key; send Authorization: Bearer <key>",
                           code="missing_api_key")
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(secret)))
    if key is None or key.revoked_at is not None:
        raise Unauthorized("invalid API key", code="invalid_api_key")
    return Caller(key.project_id, key.id, frozenset(key.scopes or ()))


class KeyCache:
    """`caller_for_key` for a service's request path, each answer kept `ttl` seconds: a busy
    service reads the database once per key per interval rather than once per request. A key
    revoked meanwhile is refused by that service within `ttl` seconds. Unknown keys are never
    remembered."""

    def __init__(self, sessions: sessionmaker[Session], ttl: float = KEY_CACHE_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        """``clock``: seconds, the time-to-live's measure (a test's own clock)."""
        self._sessions, self._ttl, self._clock = sessions, ttl, clock
        self._known: dict[str, tuple[Caller, float]] = {}
        """hash of the key → (its caller, when that was read)."""

    async def caller(self, secret: str | None) -> Caller:
        digest = hash_key(secret) if secret else None
        known = self._known.get(digest) if digest else None
        if known is not None and self._clock() - known[1] < self._ttl:
            return known[0]
        caller = await asyncio.to_thread(self._lookup, secret)
        if len(self._known) >= KEY_CACHE_ENTRIES:
            self._known.clear()
        assert digest is not None  # a missing key was refused by the lookup
        self._known[digest] = (caller, self._clock())
        return caller

    def forget_key(self, key_id: str) -> None:
        """Drop what is remembered of key ``key_id`` (revoked): its next request is read
        afresh. Safe from another thread (`services.invalidation`)."""
        for digest, (caller, _) in list(self._known.items()):
            if caller.key_id == key_id:
                self._known.pop(digest, None)

    def _lookup(self, secret: str | None) -> Caller:
        with session_scope(self._sessions) as session:
            return caller_for_key(session, secret)


def address_allowed(host: str | None, networks: list[str]) -> bool:
    """Whether ``host`` (a client's IP address) is in one of ``networks`` (CIDR)."""
    if host is None:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(network, strict=False) for network in networks)
