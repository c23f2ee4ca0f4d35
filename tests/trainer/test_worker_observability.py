"""A job's request id from the api through Celery to the worker and on to the reward service it
scores with, and the worker's own /metrics port: the real api, PostgreSQL, Redis, an
`alignd worker` process and a reward service on loopback."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from services.observability import RequestIdFilter
from services.settings import RewardSettings
from services.web import ServerThread, free_port
from tests.api.test_api_observability import metric_value
from tests.api.test_files import upload
from tests.conftest import ADMIN_KEY, wait_for
from tests.data import jsonl
from tests.trainer.test_online import DIGIT_SHARE, prompt_rows
from tests.trainer.test_reinforcement_job import FAST, create
from tests.trainer.test_worker import wait_status

pytestmark = pytest.mark.slow


@dataclass
class SeenByRewardService:
    """What the reward service saw: each /v1/score request's X-Request-ID header as it arrived,
    and the request id its own access log records carry."""

    headers: list[str | None] = field(default_factory=list)
    logged: list[tuple[str, str]] = field(default_factory=list)


class _RecordHeaders:
    def __init__(self, app: Any, seen: SeenByRewardService) -> None:
        self.app, self.seen = app, seen

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/score":
            given = dict(scope["headers"]).get(b"x-request-id")
            self.seen.headers.append(given.decode() if given else None)
        await self.app(scope, receive, send)


class _Capture(logging.Handler):
    def __init__(self, seen: SeenByRewardService) -> None:
        super().__init__()
        self.seen = seen
        self.addFilter(RequestIdFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.logged.append((record.request_id, record.getMessage()))  # type: ignore[attr-defined]


@pytest.fixture
def recorded_reward_service(database_url: str) -> Iterator[tuple[str, SeenByRewardService]]:
    from reward_service.main import create_app

    seen = SeenByRewardService()
    settings = RewardSettings(_env_file=None, environment="test",  # type: ignore[call-arg]
                              database_url=database_url, admin_key=ADMIN_KEY)
    server = ServerThread(_RecordHeaders(create_app(settings), seen), log_level="info")
    capture = _Capture(seen)
    access = logging.getLogger("uvicorn.access")  # configured by the server's Config above
    access.addHandler(capture)
    try:
        with server:
            yield server.url, seen
    finally:
        access.removeHandler(capture)


def test_a_job_carries_its_request_id_to_the_reward_service_and_the_worker_serves_metrics(
    client: httpx.Client, worker_factory: Any,
    recorded_reward_service: tuple[str, SeenByRewardService],
) -> None:
    reward_url, seen = recorded_reward_service
    port = free_port()
    worker = worker_factory(ALIGND_REWARD_URL=reward_url, ALIGND_METRICS_PORT=str(port),
                            ALIGND_LOG_FORMAT="json")
    training = upload(client, jsonl(prompt_rows(16)), "prompts").json()["id"]
    request_id = "e2e-7c1d9a"
    client.headers["X-Request-ID"] = request_id
    job_id = create(client, training, reward=DIGIT_SHARE,
                    hyperparameters={**FAST, "max_steps": 3, "eval_every": 100})
    del client.headers["X-Request-ID"]

    def worker_metrics() -> str | None:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        except httpx.HTTPError:
            return None

    first = wait_for(lambda: (text := worker_metrics()) and
                     (metric_value(text, "alignd_worker_steps_total") or 0) >= 1 and text,
                     timeout=300, message="the worker's metrics to count a step")
    assert "alignd_worker_running_jobs" in first
    job = wait_status(client, job_id, {"succeeded", "failed"}, 600, worker)
    assert job["status"] == "succeeded", (job, worker.log())

    final = worker_metrics()
    assert final is not None
    assert metric_value(final, "alignd_worker_steps_total") == 3
    assert metric_value(final, "alignd_worker_job_step") == 3
    assert metric_value(final, 'alignd_worker_jobs_total{outcome="succeeded"}') == 1
    assert metric_value(final, "alignd_worker_running_jobs") == 0

    # Every scoring call of the job named the request that created it ...
    assert seen.headers and set(seen.headers) == {request_id}
    # ... and the reward service's own log records of those calls carry it.
    scored = [rid for rid, message in seen.logged if "/v1/score" in message]
    assert scored and set(scored) == {request_id}

    # The worker's logs are JSON lines, its records of the job under the same id.
    lines = [json.loads(line) for line in worker.log_path.read_text().splitlines()
             if line.startswith("{")]
    running = [line for line in lines if line["message"].startswith(f"job {job_id}: running")]
    assert running and running[0]["request_id"] == request_id
    assert {"time", "level", "logger"} <= running[0].keys()
