"""The reward and inference apps answer their health routes over real HTTP on loopback, and
the containers' health check script reads those answers."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from inference.main import create_app as create_inference_app
from reward_service.main import create_app as create_reward_app
from services.settings import InferenceSettings, RewardSettings

HEALTHCHECK = Path(__file__).resolve().parents[2] / "deploy/healthcheck.py"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(app: FastAPI) -> Iterator[str]:
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"uvicorn did not start on port {port}")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


APPS: dict[str, Callable[[str], FastAPI]] = {
    # Both services read the model registry from Postgres, and /readyz checks it answers.
    "reward": lambda database_url: create_reward_app(
        RewardSettings(environment="test", database_url=database_url)),
    "inference": lambda database_url: create_inference_app(
        InferenceSettings(environment="test", database_url=database_url)),
}


@pytest.fixture(scope="module", params=sorted(APPS))
def base_url(request: pytest.FixtureRequest, database_url: str) -> Iterator[str]:
    yield from _serve(APPS[request.param](database_url))


def test_healthz_answers_ok(base_url: str) -> None:
    response = httpx.get(f"{base_url}/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_answers_ok_when_dependencies_answer(base_url: str) -> None:
    response = httpx.get(f"{base_url}/readyz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_unknown_route_is_a_404_envelope(base_url: str) -> None:
    response = httpx.get(f"{base_url}/v1/no-such-route")
    assert response.status_code == 404
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "not_found_error"


def _healthcheck(url: str) -> int:
    result = subprocess.run([sys.executable, str(HEALTHCHECK), url], check=False, timeout=30)
    return result.returncode


def test_container_healthcheck_passes_on_readyz(base_url: str) -> None:
    assert _healthcheck(f"{base_url}/readyz") == 0


def test_container_healthcheck_fails_on_an_error_or_no_server(base_url: str) -> None:
    assert _healthcheck(f"{base_url}/v1/no-such-route") == 1
    assert _healthcheck(f"http://127.0.0.1:{_free_port()}/readyz") == 1
