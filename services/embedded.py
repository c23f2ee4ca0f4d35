"""Embedded mode: a real PostgreSQL (from the `pgserver` package) and Celery's filesystem
transport, both under the data folder. Used when no database/broker URL is configured."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from services.settings import AlignSettings

log = logging.getLogger(__name__)
EMBEDDED_DATABASE = "alignd"


def _pgserver() -> Any:
    """The bundled server, imported only in embedded mode (quietly: on import it warns that
    XDG_RUNTIME_DIR is unset, which is normal on servers and in containers)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
    return pgserver


def _start_postgres(data_dir: Path) -> Any:
    pgserver = _pgserver()
    data_dir.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None: the server outlives this process, so api and workers share it.
    return pgserver.get_server(data_dir, cleanup_mode=None)


def embedded_database_url(data_dir: Path) -> str:
    server = _start_postgres(data_dir)
    exists = server.psql(f"select 1 from pg_database where datname = '{EMBEDDED_DATABASE}';")
    if "(1 row)" not in exists:
        server.psql(f"create database {EMBEDDED_DATABASE};")
    socket_dir = parse_qs(urlparse(server.get_uri()).query)["host"][0]
    return f"postgresql+psycopg://postgres@/{EMBEDDED_DATABASE}?host={socket_dir}"


def embedded_postgres_pid(data_dir: Path) -> int | None:
    """The pid of the PostgreSQL running on this folder, or None when none runs: a process
    about to start it learns whether it will be the one that started it."""
    import os

    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, as another user
    return pid


def stop_embedded_postgres(data_dir: Path) -> None:
    """Stop the data folder's PostgreSQL (fast shutdown), whoever started it: callers stop
    only a server they started (see embedded_postgres_pid).

    pgserver's own reference counting cannot tell that the processes which shared the server
    have exited, so the process that started it stops it with pg_ctl directly."""
    import os
    import subprocess

    pid = embedded_postgres_pid(data_dir)
    if pid is None:
        return
    user = "pgserver" if os.geteuid() == 0 else None  # pgserver runs postgres as this user
    try:
        _pgserver().pg_ctl(["-w", "-m", "fast", "stop"], pgdata=data_dir, user=user)
    except subprocess.CalledProcessError:
        log.warning("could not stop the embedded PostgreSQL (pid %d) in %s", pid, data_dir)


def resolve_database_url(settings: AlignSettings) -> str:
    if settings.database_url:
        return settings.database_url
    return embedded_database_url(settings.postgres_dir)


def broker_options(settings: AlignSettings) -> tuple[str, dict[str, Any]]:
    """The broker URL and its transport options."""
    if settings.broker_url:
        return settings.broker_url, {"visibility_timeout": settings.broker_visibility_timeout}
    queue_dir = settings.broker_dir / "queue"
    processed_dir = settings.broker_dir / "processed"
    control_dir = settings.broker_dir / "control"
    for folder in (queue_dir, processed_dir, control_dir):
        folder.mkdir(parents=True, exist_ok=True)
    return "filesystem://", {
        "data_folder_in": str(queue_dir),
        "data_folder_out": str(queue_dir),
        "processed_folder": str(processed_dir),
        "control_folder": str(control_dir),
        "store_processed": False,
        # kombu sleeps this long after an empty poll; its 1 s default is the submit latency.
        "polling_interval": 0.1,
    }
