"""The embedded stack on one machine: api, one worker, reward and inference as child
processes of `alignd up`, sharing the data folder's PostgreSQL and filesystem broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services.db.migrate import upgrade
from services.embedded import resolve_database_url, stop_embedded_postgres
from services.settings import AlignSettings

SERVICES = {"api": 8000, "reward": 8001, "inference": 8002}


@dataclass
class Stack:
    settings: AlignSettings
    env: dict[str, str]
    log_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def urls(self) -> dict[str, str]:
        return {"api": self.settings.api_url, "reward": self.settings.reward_url,
                "inference": self.settings.inference_url}

    def start(self, timeout: float = 120.0) -> None:
        upgrade(resolve_database_url(self.settings))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name, port in SERVICES.items():
            url = self.urls()[name]
            env = {**self.env, "ALIGND_PORT": url.rsplit(":", 1)[-1] if ":" in url else str(port)}
            self._spawn(name, ["serve", name], env)
        self._spawn("worker", ["worker"], self.env)
        self.wait_healthy(timeout)

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        log = (self.log_dir / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "cli.main", *args], env=env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for name, url in self.urls().items():
            while True:
                if self.processes[name].poll() is not None:
                    raise RuntimeError(f"{name} exited; see {self.log_dir / (name + '.log')}")
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not become healthy in {timeout:.0f} s")
                time.sleep(0.3)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        if self.settings.embedded:  # the stack started the embedded PostgreSQL; stop it too
            stop_embedded_postgres(self.settings.postgres_dir)

    def wait(self) -> None:
        """Block until Ctrl-C, SIGTERM, or a child dies; then stop everything."""
        signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            while all(p.poll() is None for p in self.processes.values()):
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()


def embedded_stack(settings: AlignSettings, extra_env: dict[str, str] | None = None) -> Stack:
    env = {**os.environ, **(extra_env or {}), "ALIGND_DATA_DIR": str(settings.data_dir)}
    return Stack(settings=settings, env=env, log_dir=settings.data_dir.expanduser() / "logs")
