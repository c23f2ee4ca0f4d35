"""A worker killed with SIGKILL mid-job: the job is re-delivered, resumes from its last
checkpoint on another worker, and succeeds with no step run twice. Its own module, so no
other worker process is consuming the queue while it runs."""

from __future__ import annotations

import pytest

from tests.conftest import wait_for
from tests.trainer.test_worker import FAST_LEASES, events, files, series, start_job, wait_status

pytestmark = pytest.mark.slow
STEPS = 240


def test_killed_worker_job_resumes_from_checkpoint(client, worker_factory,
                                                   database_url: str) -> None:
    training, _ = files(client, train=64)
    # long enough to be mid-run when the kill lands (a step takes milliseconds, the kill
    # follows the first checkpoint within a poll), and no longer: the resume runs the rest
    job_id = start_job(client, training, max_steps=STEPS, n_epochs=100, batch_size=8,
                       checkpoint_every=10)
    first = worker_factory(**FAST_LEASES)

    def checkpointed() -> int | None:
        data = client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"]
        return data[0]["step_number"] if data else None

    killed_after = wait_for(checkpointed, 180, interval=0.05, message="a first checkpoint")
    first.kill()
    assert client.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] == "running"
    second = worker_factory(**FAST_LEASES)
    job = wait_status(client, job_id, {"succeeded", "failed"}, 300, second)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2  # one start, one resume: never two workers at once

    messages = [e["message"] for e in events(client, job_id)]
    resumed = [m for m in messages if m.startswith("resumed from checkpoint at step")]
    assert len(resumed) == 1, messages
    resumed_at = int(resumed[0].rsplit(" ", 1)[-1])
    assert killed_after <= resumed_at < STEPS and resumed_at % 10 == 0
    assert sum("took over the job" in m for m in messages) == 1
    steps, _ = series(client, job_id, "train_loss")
    assert steps == list(range(1, STEPS + 1))

    # `job_metrics` keeps one value per step, so a step run twice could not show there: the
    # append-only `job_steps` shows which attempt ran each step, where and when.
    runs = step_runs(database_url, job_id)
    assert sorted(runs) == [1, 2]
    first_steps = [step for step, _, _ in runs[1]]
    second_steps = [step for step, _, _ in runs[2]]
    for steps_of in (first_steps, second_steps):  # per attempt, each step once, in order
        assert steps_of == sorted(set(steps_of)), steps_of
    assert first_steps[0] == 1 and first_steps == list(range(1, first_steps[-1] + 1))
    assert first_steps[-1] >= resumed_at  # steps after the checkpoint ran again, by design
    assert second_steps == list(range(resumed_at + 1, STEPS + 1))
    assert {owner for _, owner, _ in runs[1]}.isdisjoint({owner for _, owner, _ in runs[2]})
    assert max(at for _, _, at in runs[1]) < min(at for _, _, at in runs[2])  # never at once


def step_runs(database_url: str, job_id: str) -> dict[int, list[tuple[int, str, object]]]:
    """Per attempt: (step, worker, when) as `job_steps` recorded them, in report order."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    with engine.connect() as connection:
        rows = connection.execute(text(
            "SELECT attempt, step, owner, reported_at FROM job_steps WHERE job_id = :job "
            "ORDER BY id"), {"job": job_id}).all()
    engine.dispose()
    runs: dict[int, list[tuple[int, str, object]]] = {}
    for attempt, step, owner, at in rows:
        runs.setdefault(attempt, []).append((step, owner, at))
    return runs
