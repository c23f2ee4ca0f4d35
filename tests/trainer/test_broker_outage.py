"""The broker down when a job is created: the job is stored (PostgreSQL is the outbox), the
client gets it back queued with an event saying why it waits, and once the broker is back a
worker's sweep publishes it and it runs to the end. It failed with "could not enqueue"
before. Its own module: a Redis of its own, a worker of its own."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.web import ServerThread, free_port
from tests.conftest import new_project, wait_for
from tests.trainer.test_worker import events, files, start_job, wait_status

pytestmark = pytest.mark.slow


class Redis:
    """A throwaway redis-server on a port of its own, stopped and started at will."""

    def __init__(self, port: int, folder: Path) -> None:
        self.port, self.folder = port, folder
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def answers() -> bool:
            try:
                import redis

                return bool(redis.Redis(port=self.port, socket_timeout=0.5).ping())
            except Exception:  # noqa: BLE001 - not up yet
                return False

        wait_for(answers, 20, message="redis to start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=20)
            self.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Redis]:
    server = Redis(free_port(), tmp_path)
    server.start()
    yield server
    server.stop()


def test_a_job_created_while_the_broker_is_down_runs_once_it_is_back(
        api_settings: object, admin: httpx.Client, redis_server: Redis, worker_factory) -> None:
    from api.main import create_app
    from services.settings import ApiSettings

    settings = ApiSettings(max_upload_bytes=200_000, broker_url=redis_server.url)
    _, key = new_project(admin)
    with ServerThread(create_app(settings)) as api, httpx.Client(
            base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        training, _ = files(client, train=16)
        redis_server.stop()
        job_id = start_job(client, training, max_steps=2, batch_size=8)  # answered 200
        job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        assert job["status"] == "queued" and job["error"] is None
        assert any("could not be reached" in e["message"] for e in events(client, job_id))

        redis_server.start()
        worker = worker_factory(ALIGND_BROKER_URL=redis_server.url, ALIGND_SWEEP_SECONDS="1")
        job = wait_status(client, job_id, {"succeeded", "failed"}, 300, worker)
        assert job["status"] == "succeeded", job
        assert any("queue is back; published" in e["message"] for e in events(client, job_id))
