"""Cancellation reaches a running job through PostgreSQL LISTEN/NOTIFY: the api notifies in
the transaction that sets `cancel_requested`, and the worker's listener flags the job at once,
so the training loop sees it before its next step without querying the database every step.
(The lease heartbeat also reads `cancel_requested`, which covers a notification sent while no
listener was connected.)"""

from __future__ import annotations

import logging
import threading

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


class CancelListener:
    """Sets `flag` when a cancellation for `job_id` is notified."""

    def __init__(self, database_url: str, job_id: str, flag: threading.Event):
        self.dsn, self.job_id, self.flag = libpq_dsn(database_url), job_id, flag
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"cancel-{job_id}", daemon=True)

    def start(self, timeout: float = 10.0) -> CancelListener:
        self._thread.start()
        self._listening.wait(timeout)
        return self

    def stop(self) -> None:
        """Ask the thread to end; it does within one notifies() timeout, without holding up
        the caller (the worker's next job)."""
        self._stop.set()

    def _run(self) -> None:
        """Listen until stopped; a lost connection (PostgreSQL restarted) is made again every
        `RECONNECT_SECONDS`, and the heartbeat's read of `cancel_requested` covers the gap."""
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CANCEL_CHANNEL}")
                    self._listening.set()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            if note.payload == self.job_id:
                                self.flag.set()
            except psycopg.Error as exc:
                log.warning("cancel listener for %s lost PostgreSQL (%s); reconnecting",
                            self.job_id, str(exc).splitlines()[0][:200] if str(exc) else exc)
                self._listening.set()  # start() must not wait on a database that is down
                self._stop.wait(RECONNECT_SECONDS)
