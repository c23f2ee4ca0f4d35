"""The api's request ids, /metrics and TensorBoard export, on the real api, PostgreSQL and Redis
broker (no worker consumes here)."""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import redis
from sqlalchemy import create_engine, text

from api.metrics import ApiMetrics, JobCounts, JobsCollector
from services.celery_app import REQUEST_ID_TASK_HEADER, make_celery
from services.db.engine import session_factory
from services.settings import ApiSettings
from tests.api.test_files import upload
from tests.api.test_jobs import create
from tests.conftest import wait_for
from tests.data import jsonl, supervised_rows


@pytest.fixture
def training_file(client: httpx.Client) -> str:
    return upload(client, jsonl(supervised_rows(20))).json()["id"]


def test_a_client_s_request_id_is_echoed_and_a_bad_one_replaced(client: httpx.Client) -> None:
    given = "trace-7f3a:b12/0"
    assert client.get("/v1/fine_tuning/jobs", headers={"X-Request-ID": given}
                      ).headers["X-Request-ID"] == given
    # Error responses carry it too, the envelope's own and a route-less 404.
    missing = client.get("/v1/fine_tuning/jobs/ftjob-nope", headers={"X-Request-ID": given})
    assert missing.status_code == 404 and missing.headers["X-Request-ID"] == given
    unknown = httpx.get(f"{client.base_url}/no/such/path", headers={"X-Request-ID": given})
    assert unknown.status_code == 404 and unknown.headers["X-Request-ID"] == given
    for bad in ("x" * 129, "two words", "<script>", "-leading-dash"):
        answered = client.get("/v1/fine_tuning/jobs", headers={"X-Request-ID": bad})
        assert answered.headers["X-Request-ID"] not in ("", bad)
    first, second = (client.get("/v1/fine_tuning/jobs").headers["X-Request-ID"] for _ in "ab")
    assert first != second and len(first) == 32
    # A middleware's own answer (the upload limit's 413) carries it as well.
    too_large = client.post("/v1/files", headers={"X-Request-ID": given},
                            files={"file": ("big.jsonl", b"x" * 400_000)},
                            data={"purpose": "fine-tune"})
    assert too_large.status_code == 413 and too_large.headers["X-Request-ID"] == given


def test_an_unexpected_error_s_500_carries_the_request_id_and_is_counted() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from services.web import (
        HttpMetrics,
        ServerThread,
        install_error_handlers,
        observe_requests,
        service_app,
    )

    app = service_app()
    install_error_handlers(app)

    @app.get("/items/{item_id}")
    def broken(item_id: str) -> None:
        raise RuntimeError("a bug")

    registry = CollectorRegistry()
    app.state.alignd = SimpleNamespace(metrics=SimpleNamespace(http=HttpMetrics(registry)))
    observe_requests(app)
    with ServerThread(app) as server:
        response = httpx.get(f"{server.url}/items/42", headers={"X-Request-ID": "boom-1"})
    assert response.status_code == 500 and response.headers["X-Request-ID"] == "boom-1"
    assert 'alignd_http_requests_total{method="GET",route="/items/{item_id}",status="500"} 1.0' \
        in generate_latest(registry).decode()


def test_the_job_message_carries_the_creating_request_s_id(
    client: httpx.Client, training_file: str, broker_url: str,
) -> None:
    given = "job-create-4242"
    response = client.post("/v1/fine_tuning/jobs", headers={"X-Request-ID": given}, json={
        "model": "tiny-base", "training_file": training_file,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}}})
    assert response.status_code == 200, response.text
    job_id = response.json()["id"]
    broker = redis.Redis.from_url(broker_url)
    messages = [json.loads(raw) for raw in broker.lrange("cpu", 0, -1)]
    broker.close()
    ours = [m for m in messages
            if json.loads(base64.b64decode(m["body"]))[0] == [job_id]]
    assert len(ours) == 1
    assert ours[0]["headers"][REQUEST_ID_TASK_HEADER] == given


def metric_value(text_: str, series: str) -> float | None:
    for line in text_.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_count_requests_by_route_template_and_jobs_by_state(
    client: httpx.Client, api_url: str, training_file: str,
) -> None:
    job_id = create(client, training_file).json()["id"]
    for _ in range(3):
        assert client.get(f"/v1/fine_tuning/jobs/{job_id}").status_code == 200
    client.get("/v1/fine_tuning/jobs/ftjob-not-there")
    # A scrape answers without the job counts when they take too long (a loaded machine);
    # the next one finds them read.
    text_ = wait_for(lambda: (scraped := httpx.get(f"{api_url}/metrics").text) and metric_value(
        scraped, "alignd_jobs_collect_ok") == 1 and scraped, timeout=60,
        message="a scrape with the job counts")
    route = '/v1/fine_tuning/jobs/{job_id}'
    ok = metric_value(text_, f'alignd_http_requests_total{{method="GET",route="{route}",'
                             'status="200"}')
    assert ok is not None and ok >= 3
    assert metric_value(text_, f'alignd_http_requests_total{{method="GET",route="{route}",'
                               'status="404"}') is not None
    assert f'alignd_http_request_seconds_bucket{{le="0.005",method="GET",route="{route}"}}' \
        in text_
    assert job_id not in text_ and "ftjob-not-there" not in text_  # ids never become labels
    queued = metric_value(text_, 'alignd_jobs{state="queued"}')
    assert queued is not None and queued >= 1
    assert metric_value(text_, 'alignd_jobs{state="running"}') is not None
    depth = metric_value(text_, 'alignd_job_queue_depth{queue="cpu"}')
    assert depth is not None and depth >= 1  # no worker consumes here


def test_a_scrape_answers_without_job_counts_while_postgresql_is_stuck(
    database_url: str, api_settings: ApiSettings,
) -> None:
    """A lock on the jobs table holds the count; the scrape still answers, and says so."""
    metrics = ApiMetrics.reading(session_factory(database_url), make_celery(api_settings),
                                 limit_seconds=0.5)
    with create_engine(database_url).connect() as locker:
        locker.execute(text("lock table jobs in access exclusive mode"))
        stuck = metrics.render().decode()
        locker.rollback()
    assert metric_value(stuck, "alignd_jobs_collect_ok") == 0
    assert 'alignd_jobs{state="queued"}' not in stuck
    wait_for(lambda: metric_value(metrics.render().decode(), "alignd_jobs_collect_ok") == 1,
             timeout=60, message="the job counts once the lock is gone")


def test_one_read_at_a_time_however_many_scrapes_wait_on_it() -> None:
    release, reads = threading.Event(), []

    def slow_read() -> JobCounts:
        reads.append(1)
        release.wait(30)
        return JobCounts({"queued": 2}, {"cpu": 1})

    collector = JobsCollector(slow_read, limit_seconds=0.1)
    for _ in range(3):
        names = {family.name: family for family in collector.collect()}
        assert names.keys() == {"alignd_jobs_collect_ok"}
        assert names["alignd_jobs_collect_ok"].samples[0].value == 0
    assert len(reads) == 1
    release.set()
    collector.limit_seconds = 60  # however loaded the machine, the reads now finish in time
    list(collector.collect())
    names = {family.name: family for family in collector.collect()}
    assert len(reads) >= 2  # a finished read is never reused: a later scrape reads afresh
    assert names["alignd_jobs"].samples[0].labels == {"state": "queued"}


def test_metrics_from_elsewhere_need_the_admin_key(api_settings: ApiSettings) -> None:
    from api.main import create_app
    from services.web import ServerThread

    settings = api_settings.model_copy(update={"metrics_networks": []})
    with ServerThread(create_app(settings)) as server:
        assert httpx.get(f"{server.url}/metrics").status_code == 403
        admin = {"Authorization": f"Bearer {settings.admin_key.get_secret_value()}"}
        assert httpx.get(f"{server.url}/metrics", headers=admin).status_code == 200


def test_job_metrics_export_as_a_tensorboard_event_file(
    client: httpx.Client, training_file: str, database_url: str, tmp_path: Path,
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    job_id = create(client, training_file).json()["id"]
    values = {("train_loss", step): 2.0 / step for step in range(1, 8)}
    values |= {("valid_loss", 4): 0.75, ("valid_loss", 7): 0.5, ("lr", 1): 1e-4}
    with create_engine(database_url).begin() as conn:  # as a worker records them
        conn.execute(text("insert into job_metrics (job_id, name, step, value) "
                          "values (:j, :n, :s, :v)"),
                     [{"j": job_id, "n": n, "s": s, "v": v} for (n, s), v in values.items()])
    response = client.get(f"/v1/fine_tuning/jobs/{job_id}/metrics",
                          params={"format": "tensorboard"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    disposition = response.headers["content-disposition"]
    name = disposition.split('filename="')[1].rstrip('"')
    assert "tfevents" in name and job_id in name
    run = tmp_path / "runs" / job_id
    run.mkdir(parents=True)
    (run / name).write_bytes(response.content)

    events = EventAccumulator(str(run))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["lr", "train_loss", "valid_loss"]
    read = {(tag, event.step): event.value
            for tag in events.Tags()["scalars"] for event in events.Scalars(tag)}
    assert read.keys() == values.keys()
    assert all(read[key] == pytest.approx(value, rel=1e-6) for key, value in values.items())
    # The JSON series are the same numbers.
    series = client.get(f"/v1/fine_tuning/jobs/{job_id}/metrics").json()["data"]
    assert {(s["name"], step): value for s in series
            for step, value in zip(s["steps"], s["values"], strict=True)} == values


def test_tensorboard_export_of_another_project_s_job_is_not_found(
    client: httpx.Client, training_file: str, api_url: str, admin: httpx.Client,
) -> None:
    from tests.conftest import new_project

    job_id = create(client, training_file).json()["id"]
    _, other = new_project(admin)
    response = httpx.get(f"{api_url}/v1/fine_tuning/jobs/{job_id}/metrics",
                         params={"format": "tensorboard"},
                         headers={"Authorization": f"Bearer {other}"})
    assert response.status_code == 404
    assert response.json()["error"]["param"] == "job_id"
