"""Revoked keys and deleted models reach every replica at once, through PostgreSQL
LISTEN/NOTIFY: the api notifies in the transaction that revokes the key or deletes the model's
row, and each reward and inference process drops what it remembered of it (`KeyCache`, the
registry rows its model caches keep) as the notification arrives, well within a second.

The caches' time-to-live stays as the fallback: a notification sent while a replica's
listener was reconnecting (PostgreSQL restarted) is covered when the entry expires.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.job_signals import ChannelListener

log = logging.getLogger(__name__)

CHANNEL = "alignd_invalidate"
KEY, MODEL = "key", "model"
"""The payload is ``"{kind}:{id}"``: an API key's id, or a registry model's."""


def notify_revoked_key(session: Session, key_id: str) -> None:
    """Queue the notification; PostgreSQL delivers it when the session commits."""
    session.execute(select(func.pg_notify(CHANNEL, f"{KEY}:{key_id}")))


def notify_deleted_model(session: Session, model_id: str) -> None:
    session.execute(select(func.pg_notify(CHANNEL, f"{MODEL}:{model_id}")))


Handler = Callable[[str], None]


class InvalidationListener(ChannelListener):
    """Calls ``handlers[kind](id)`` for every notification on `CHANNEL`, on the listener's
    thread (handlers must be safe to call from it: they drop dictionary entries)."""

    def __init__(self, database_url: str, handlers: dict[str, Handler]):
        super().__init__(database_url, CHANNEL, self._handle, name="invalidation")
        self.handlers = handlers

    def _handle(self, payload: str) -> None:
        kind, _, ident = payload.partition(":")
        handler = self.handlers.get(kind)
        if handler is None or not ident:
            return
        try:
            handler(ident)
        except Exception:  # a handler's bug must not end the listening
            log.exception("invalidating %s failed", payload)
