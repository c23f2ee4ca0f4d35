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


def _start_postgres(data_dir: Path) -> Any:
    import pgserver  # only embedded mode needs the bundled server

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


def stop_embedded_postgres(data_dir: Path) -> None:
    import pgserver

    server = pgserver.get_server(data_dir, cleanup_mode="stop")
    server.cleanup()


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
