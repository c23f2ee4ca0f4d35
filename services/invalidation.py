"""Revoked keys and deleted models reach every replica at once, through PostgreSQL
LISTEN/NOTIFY: the api notifies in the transaction that revokes the key or deletes the model's
row, and each reward and inference process drops what it remembered of it (`KeyCache`, the
registry rows its model caches keep) as the notification arrives, well within a second.

The caches' time-to-live stays as the fallback: a notification sent while a replica's
listener was reconnecting (PostgreSQL restarted) is covered when the entry expires.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.job_signals import RECONNECT_SECONDS, libpq_dsn

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


class InvalidationListener:
    """Calls ``handlers[kind](id)`` for every notification on `CHANNEL`, on a thread of its
    own (handlers must be safe to call from it: they drop dictionary entries)."""

    def __init__(self, database_url: str, handlers: dict[str, Handler]):
        self.dsn, self.handlers = libpq_dsn(database_url), handlers
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._thread = threading.Thread(target=self._run, name="invalidation", daemon=True)

    def start(self, timeout: float = 10.0) -> InvalidationListener:
        """Start listening; returns once it listens (or PostgreSQL could not be reached)."""
        self._thread.start()
        self._listening.wait(timeout)
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._listening.set()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self._handle(note.payload)
            except psycopg.Error as exc:
                log.warning("invalidation listener lost PostgreSQL (%s); reconnecting, caches "
                            "expire meanwhile", str(exc).splitlines()[0][:200] if str(exc) else exc)
                self._listening.set()  # start() must not wait on a database that is down
                self._stop.wait(RECONNECT_SECONDS)

    def _handle(self, payload: str) -> None:
        kind, _, ident = payload.partition(":")
        handler = self.handlers.get(kind)
        if handler is None or not ident:
            return
        try:
            handler(ident)
        except Exception:  # a handler's bug must not end the listening
            log.exception("invalidating %s failed", payload)
