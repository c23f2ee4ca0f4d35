"""Logs and the request id every alignd process shares.

A request id names one piece of work as it crosses services: the api takes a client's
``X-Request-ID`` (or makes one), carries it in the job's Celery message, and the worker that
runs the job sends it on every call it makes to the reward service. Each process keeps it in a
context variable, and every log record it writes carries it (``request_id``).

Logs are readable text by default; ``ALIGND_LOG_FORMAT=json`` writes one JSON object a line
(time, level, logger, message, request_id, and any ``extra`` fields) for a log collector.
No FastAPI here: the worker uses it too.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from services.errors import Forbidden

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID = ContextVar[str | None]("alignd_request_id", default=None)
_ACCEPTED_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+=-]{0,127}")
"""A client's id is kept when it is short and plain (a UUID, a trace id); anything else (a
log-injection attempt, a 10 kB header) is replaced by one of ours."""


def new_request_id() -> str:
    return uuid.uuid4().hex


def accepted_request_id(value: str | None) -> str | None:
    """``value`` when it may be used as a request id as it is, else None."""
    return value if value is not None and _ACCEPTED_ID.fullmatch(value) else None


def current_request_id() -> str | None:
    return _REQUEST_ID.get()


def set_request_id(request_id: str | None) -> None:
    """Bind the id for the rest of this context (an ASGI request's task, a job's run)."""
    _REQUEST_ID.set(request_id)


@contextmanager
def request_id_bound(request_id: str | None) -> Iterator[None]:
    token = _REQUEST_ID.set(request_id)
    try:
        yield
    finally:
        _REQUEST_ID.reset(token)


def request_id_headers() -> dict[str, str]:
    """The header that carries the current request id to another service ({} without one)."""
    request_id = current_request_id()
    return {REQUEST_ID_HEADER: request_id} if request_id else {}


class RequestIdFilter(logging.Filter):
    """Puts the current request id on every record (``-`` outside a request or a job)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id() or "-"
        return True


_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "request_id", "color_message"}
"""A record's own attributes; whatever else it carries came from ``extra=`` (uvicorn's
``color_message`` is a copy of the message)."""


class JsonFormatter(logging.Formatter):
    """One JSON object a record: time (UTC, ISO 8601), level, logger, message, request_id, the
    record's ``extra`` fields, and the traceback as ``exc_info`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or current_request_id(),
        }
        entry.update({key: value for key, value in vars(record).items()
                      if key not in _RECORD_FIELDS and not key.startswith("_")})
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s"


def configure_logging(level: str = "INFO", log_format: str = "text") -> None:
    """The root logger of a service or worker process: one stderr handler, text or JSON, with
    the request id on every record. uvicorn's and Celery's loggers propagate to it."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json"
                         else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def metrics_readable(client_host: str | None, authorization: str, networks: list[str],
                     admin_key: str) -> bool:
    """Whether a /metrics request may be answered: from `networks` (ALIGND_METRICS_NETWORKS),
    or elsewhere with the admin key as its bearer token."""
    from services.auth import address_allowed
    from services.security import same_secret

    if address_allowed(client_host, networks):
        return True
    secret = authorization.removeprefix("Bearer ").strip() \
        if authorization.startswith("Bearer ") else ""
    return bool(secret) and same_secret(secret, admin_key)


def metrics_refusal(networks: list[str]) -> Forbidden:
    """The 403 a /metrics request gets when `metrics_readable` says no (the counters tell
    model ids, traffic and load)."""
    return Forbidden(f"/metrics is readable without a key only from "
                     f"{', '.join(networks) or 'nowhere'}; send the admin key",
                     code="metrics_forbidden")
