"""Cancellation reaches a running job through PostgreSQL LISTEN/NOTIFY: the api notifies in
the transaction that sets `cancel_requested`, and the worker's listener flags the job at once,
so the training loop sees it before its next step without querying the database every step.
(The lease heartbeat also reads `cancel_requested`, which covers a notification sent while no
listener was connected.)"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Self

import psycopg
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)
CANCEL_CHANNEL = "alignd_job_cancel"
RECONNECT_SECONDS = 2.0


def notify_cancel(session: Session, job_id: str) -> None:
    """Queue the notification; PostgreSQL delivers it when the session commits."""
    session.execute(select(func.pg_notify(CANCEL_CHANNEL, job_id)))


def libpq_dsn(database_url: str) -> str:
    """SQLAlchemy's `postgresql+psycopg://` URL as a plain libpq connection string."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


class ChannelListener:
    """Calls ``on_payload`` with every notification's payload on ``channel``, from a thread of
    its own, until stopped. A lost connection (PostgreSQL restarted) is made again every
    `RECONNECT_SECONDS`; what was notified meanwhile is missed, so each user keeps a fallback
    (the lease heartbeat's read of the row, a cache's time-to-live)."""

    def __init__(self, database_url: str, channel: str, on_payload: Callable[[str], None],
                 name: str):
        self.dsn, self.channel, self.on_payload = libpq_dsn(database_url), channel, on_payload
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self, timeout: float = 10.0) -> Self:
        """Start listening; returns once it listens (or PostgreSQL could not be reached)."""
        self._thread.start()
        self._listening.wait(timeout)
        return self

    def stop(self) -> None:
        """Ask the thread to end; it does within one notifies() timeout, without holding up
        the caller."""
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {self.channel}")
                    self._listening.set()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self.on_payload(note.payload)
            except psycopg.Error as exc:
                log.warning("%s lost PostgreSQL (%s); reconnecting", self._thread.name,
                            str(exc).splitlines()[0][:200] if str(exc) else exc)
                self._listening.set()  # start() must not wait on a database that is down
                self._stop.wait(RECONNECT_SECONDS)


class CancelListener(ChannelListener):
    """Sets `flag` when a cancellation for `job_id` is notified."""

    def __init__(self, database_url: str, job_id: str, flag: threading.Event):
        super().__init__(database_url, CANCEL_CHANNEL,
                         lambda payload: flag.set() if payload == job_id else None,
                         name=f"cancel-{job_id}")
