"""Engines and sessions. One engine per process and URL; sessions are short and explicit."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import TypeVar

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)
T = TypeVar("T")

DATABASE_DOWN = (OperationalError, InterfaceError)
"""What SQLAlchemy raises when PostgreSQL cannot be reached or dropped the connection (a
restart, a failover): worth waiting out, unlike a constraint or a bad statement."""


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A unit of work: commit on success, roll back on any error, always close."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def ping(url: str) -> None:
    with get_engine(url).connect() as conn:
        conn.execute(text("select 1"))


def while_database_down(call: Callable[[], T], seconds: float, what: str) -> T:
    """`call()`, tried again with backoff (0.5 s doubling to 5 s) while PostgreSQL is down,
    for at most `seconds`; then the last error is raised. The pool's pre-ping replaces the
    dead connections, so the first try after PostgreSQL returns goes through."""
    deadline, pause = time.monotonic() + seconds, 0.5
    while True:
        try:
            return call()
        except DATABASE_DOWN:
            if time.monotonic() + pause > deadline:
                raise
            log.warning("PostgreSQL unavailable while %s; retrying in %.1f s", what, pause)
            time.sleep(pause)
            pause = min(pause * 2, 5.0)
