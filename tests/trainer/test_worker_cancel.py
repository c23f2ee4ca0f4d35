"""A cancel reaches a running job through PostgreSQL NOTIFY (`services.job_signals`), not the
lease heartbeat's read of the row: with the heartbeat 30 s apart, the job still stops at the
next step boundary, a moment after the api answers. Its own module, so no other worker
process is consuming the queue while it runs."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import wait_for
from tests.trainer.test_worker import events, files, series, start_job, wait_status

pytestmark = pytest.mark.slow

SLOW_HEARTBEAT = {"ALIGND_LEASE_SECONDS": "120", "ALIGND_HEARTBEAT_SECONDS": "30"}
STOPPED_WITHIN = 5.0
"""Seconds from the cancel's answer to the job's last step: slack for a busy machine, and a
sixth of the heartbeat's 30 s, so only the notification can explain a stop within it."""


def test_cancel_is_seen_at_the_next_step_by_notification(client, worker_factory,
                                                         database_url: str) -> None:
    training, _ = files(client, train=64)
    job_id = start_job(client, training, n_epochs=100, batch_size=4, checkpoint_every=1000)
    worker = worker_factory(**SLOW_HEARTBEAT)
    wait_for(lambda: len(series(client, job_id, "train_loss")[0]) >= 3, 120,
             message="training to start")
    assert client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").json()["cancel_requested"]
    answered, started = datetime.now(UTC), time.monotonic()
    job = wait_status(client, job_id, {"cancelled", "failed", "succeeded"}, 60, worker)
    assert job["status"] == "cancelled", job
    assert time.monotonic() - started < 30  # well before a heartbeat could have read the row
    messages = [e["message"] for e in events(client, job_id)]
    assert any("cancellation requested" in m for m in messages)
    engine = create_engine(database_url)
    with engine.connect() as connection:
        last = connection.execute(text(
            "SELECT max(reported_at) FROM job_steps WHERE job_id = :job"),
            {"job": job_id}).scalar_one()
    engine.dispose()
    # the job's last step was reported within seconds of the answer: the notice, not the
    # heartbeat, stopped it (steps take milliseconds here, so the count of steps after the
    # answer depends on the machine's load; the time does not, to within these seconds)
    assert (last - answered).total_seconds() < STOPPED_WITHIN, (last, answered)
