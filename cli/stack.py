"""The embedded stack on one machine: api, one worker, reward and inference as child
processes of `alignd up`, sharing the data folder's PostgreSQL and filesystem broker.

One stack per data folder: it holds the folder's lock (cli.stack_lock) from before anything
starts until everything has stopped, names ports already in use before it starts anything,
restarts a child that dies (cli.supervisor), and stops only what it started — the embedded
PostgreSQL only if no one else had it running."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
from rich.console import Console
from rich.table import Table

from cli.stack_lock import Record, StackError, StackLock, pid_alive
from cli.supervisor import Part, RestartPolicy, Supervisor
from services.db.migrate import upgrade
from services.embedded import embedded_postgres_pid, resolve_database_url, stop_embedded_postgres
from services.settings import AlignSettings

SERVICES = {"api": 8000, "reward": 8001, "inference": 8002}
"""The HTTP parts and their default ports (ALIGND_<NAME>_URL chooses others)."""


@dataclass
class Stack:
    settings: AlignSettings
    env: dict[str, str]
    log_dir: Path
    console: Console = field(default_factory=lambda: Console(stderr=True))
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    lock: StackLock | None = None
    supervisor: Supervisor | None = None
    owns_postgres: bool = False
    """This stack started the embedded PostgreSQL (or adopted one a dead stack started)."""
    started_at: float = 0.0

    def urls(self) -> dict[str, str]:
        return {"api": self.settings.api_url, "reward": self.settings.reward_url,
                "inference": self.settings.inference_url}

    def claim(self) -> None:
        """Take the data folder's lock and check the ports, before anything starts. Raises
        StackError (AlreadyRunning among them) with a message for the user."""
        if self.lock is not None:
            return
        lock = StackLock.acquire(self.settings.data_dir.expanduser())
        busy = ports_in_use(self.urls())
        if busy:
            lock.give_back()
            raise StackError("; ".join(busy) + _left_running(lock.previous))
        self.lock, self.started_at = lock, time.time()
        self._record("starting")

    def start(self, timeout: float = 120.0) -> None:
        self.claim()
        try:
            self._start_postgres()
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.supervisor = Supervisor(self._parts(), self.policy, self._say)
            self.supervisor.start()
            self._record("starting")
            self.wait_healthy(timeout)
            self._record("running")
        except BaseException:
            self.stop()
            raise

    def _start_postgres(self) -> None:
        if self.settings.embedded:
            assert self.lock is not None
            running = embedded_postgres_pid(self.settings.postgres_dir)
            left = self.lock.previous.get("postgres") or {}  # by a stack that died
            self.owns_postgres = running is None or bool(left.get("started")
                                                          and left.get("pid") == running)
        upgrade(resolve_database_url(self.settings))

    def _parts(self) -> dict[str, Part]:
        parts = {}
        for name, url in self.urls().items():
            env = {**self.env, "ALIGND_PORT": str(_port(url))}
            parts[name] = Part(name, _command("serve", name), env, self.log_dir / f"{name}.log",
                               _port(url))
        parts["worker"] = Part("worker", _command("worker"), self.env, self.log_dir / "worker.log")
        return parts

    def wait_healthy(self, timeout: float) -> None:
        assert self.supervisor is not None
        deadline = time.monotonic() + timeout
        for name, url in self.urls().items():
            part = self.supervisor.parts[name]
            while True:
                if part.process is None or part.process.poll() is not None:
                    raise StackError(f"{name} exited while starting; see {part.log_path}")
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise StackError(f"{name} did not become healthy in {timeout:.0f} s; "
                                     f"see {part.log_path}")
                time.sleep(0.3)

    def supervise(self) -> None:
        """Keep the children running, restarting those that die, until Ctrl-C or SIGTERM;
        then stop everything this stack started."""
        stop_on_signals()
        assert self.supervisor is not None
        try:
            while True:
                if self.supervisor.check():
                    self._record("running")
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):  # a second one must not cut it short
                signal.signal(signum, signal.SIG_IGN)
            self.stop()

    def stop(self) -> None:
        """Stop the children, then the embedded PostgreSQL if this stack started it, then let
        go of the data folder."""
        if self.supervisor is not None:
            self._record("stopping")
            self.supervisor.stop()
        if self.owns_postgres:
            stop_embedded_postgres(self.settings.postgres_dir)
            self.owns_postgres = False
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _record(self, state: str) -> None:
        if self.lock is None:
            return
        parts = self.supervisor.parts if self.supervisor else {}
        postgres = None
        if self.settings.embedded:
            postgres = {"pid": embedded_postgres_pid(self.settings.postgres_dir),
                        "started": self.owns_postgres}
        self.lock.write({"pid": os.getpid(), "state": state, "started_at": self.started_at,
                         "data_dir": str(self.settings.data_dir.expanduser()),
                         "log_dir": str(self.log_dir), "urls": self.urls(), "postgres": postgres,
                         "parts": {name: part.snapshot() for name, part in parts.items()}})

    def _say(self, message: str) -> None:
        self.console.print(message, highlight=False, markup=False)
        with (self.log_dir / "stack.log").open("a") as log:
            log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")



def ports_in_use(urls: dict[str, str]) -> list[str]:
    """What stops each service's port from being bound, as a sentence (none: [])."""
    busy = []
    for name, url in urls.items():
        host, port = urlparse(url).hostname or "127.0.0.1", _port(url)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            try:
                probe.bind((host, port))
            except OSError:
                busy.append(f"port {port} ({name}, ALIGND_{name.upper()}_URL={url}) is already "
                            f"in use; stop what listens there or set ALIGND_{name.upper()}_URL")
    return busy


def _left_running(previous: Record) -> str:
    """Advice when a stack that died may have left its parts running (holding its ports)."""
    pids = [str(part["pid"]) for part in previous.get("parts", {}).values()
            if pid_alive(part.get("pid"))]
    if not pids:
        return ""
    return (f"; a stack that died (pid {previous.get('pid')}) may have left its parts running: "
            f"pids {', '.join(pids)}")


def stop_on_signals() -> None:
    """Ctrl-C and SIGTERM (`alignd stop`) unwind the stack, which stops what it started."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def status_table(record: Record) -> Table:
    """Each part of a running stack: pid, port, health, uptime, restarts."""
    table = Table("part", "pid", "port", "health", "uptime", "restarts", box=None,
                  pad_edge=False, title_justify="left",
                  title=f"alignd (pid {record.get('pid')}) on {record.get('data_dir')}, "
                        f"{record.get('state')}")
    postgres = record.get("postgres")
    if postgres:
        table.add_row("postgres", str(postgres.get("pid") or "-"), "socket",
                      "ok" if embedded_postgres_pid(Path(record["data_dir"]) / "postgres")
                      else "down", "-", "-")
    urls = record.get("urls", {})
    for name, part in record.get("parts", {}).items():
        table.add_row(name, str(part["pid"] or "-"), str(part["port"] or "-"),
                      _health(part, urls.get(name)), _uptime(part), str(part["restarts"]))
    return table


def _health(part: dict[str, Any], url: str | None) -> str:
    if part["state"] != "running":
        return part["state"]
    if url is None:
        return "ok" if pid_alive(part["pid"]) else "down"
    try:
        response = httpx.get(f"{url}/healthz", timeout=2)
    except httpx.HTTPError:
        return "down"
    return "ok" if response.status_code == 200 else f"HTTP {response.status_code}"


def _uptime(part: dict[str, Any]) -> str:
    if part["state"] != "running":
        return "-"
    seconds = int(time.time() - part["started_at"])
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h {rest // 60:02d}m" if hours else f"{rest // 60}m {rest % 60:02d}s"


def _port(url: str) -> int:
    parsed = urlparse(url)
    return parsed.port or (443 if parsed.scheme == "https" else 80)


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", *args]


def embedded_stack(settings: AlignSettings, extra_env: dict[str, str] | None = None,
                   console: Console | None = None) -> Stack:
    env = {**os.environ, **(extra_env or {}), "ALIGND_DATA_DIR": str(settings.data_dir)}
    return Stack(settings=settings, env=env, log_dir=settings.data_dir.expanduser() / "logs",
                 console=console or Console(stderr=True))
