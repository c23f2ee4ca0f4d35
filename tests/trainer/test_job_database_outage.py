"""PostgreSQL stopped under a running job and started again: the worker trains on through the
outage (its metrics kept, its checkpoint waiting to be recorded), the api answers 503
meanwhile, and the job succeeds on its first attempt, every step run once, nothing missing.
A PostgreSQL of its own (the embedded one), so the rest of the session keeps its database, and
the `gpu` queue, which no other test's worker consumes."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from services.web import ServerThread
from tests.api.test_database_outage import restart
from tests.conftest import ADMIN_KEY, WorkerProcess, new_project, wait_for
from tests.trainer.test_worker import events, files, series, start_job, wait_status
from tests.trainer.test_worker_crash import step_runs

pytestmark = pytest.mark.slow
STEPS, EVERY = 240, 10


def test_a_running_job_outlives_a_database_restart(tmp_path: Path, service_env: dict[str, str],
                                                   api_settings: object) -> None:
    from api.main import create_app
    from services.db.migrate import upgrade
    from services.embedded import embedded_database_url, stop_embedded_postgres
    from services.settings import ApiSettings

    folder = tmp_path / "postgres"
    url = embedded_database_url(folder)
    upgrade(url)
    queue = "gpu"
    worker = WorkerProcess(
        {**service_env, "ALIGND_DATABASE_URL": url}, tmp_path / "worker.log",
        ALIGND_QUEUES=f'["{queue}"]', ALIGND_TORCH_THREADS="1", ALIGND_LEASE_SECONDS="30",
        ALIGND_HEARTBEAT_SECONDS="1", ALIGND_SWEEP_SECONDS="1",
        ALIGND_DATABASE_RETRY_SECONDS="120")
    try:
        settings = ApiSettings(database_url=url, job_queue=queue, max_upload_bytes=200_000)
        with ServerThread(create_app(settings)) as api, httpx.Client(
                base_url=api.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                timeout=30) as admin:
            _, key = new_project(admin)
            client = httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"},
                                  timeout=30)
            training, _ = files(client, train=64)
            job_id = start_job(client, training, max_steps=STEPS, n_epochs=100, batch_size=8,
                               checkpoint_every=EVERY)
            worker.start()

            def checkpointed() -> bool:
                return bool(client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints")
                            .json()["data"])

            wait_for(checkpointed, 180, interval=0.05, message="a first checkpoint")
            stop_embedded_postgres(folder)
            during = client.get(f"/v1/fine_tuning/jobs/{job_id}")
            assert during.status_code == 503, during.text
            # three missed heartbeats: the job has met the outage (its metrics flush each second)
            wait_for(lambda: worker.log_path.read_text().count("lease renewal failed") >= 3, 60,
                     message="the worker to miss three heartbeats")
            restart(folder)

            job = wait_status(client, job_id, {"succeeded", "failed", "cancelled"}, 300, worker)
            assert job["status"] == "succeeded", (job, worker.log())
            assert job["attempts"] == 1, worker.log()  # the worker kept its lease throughout
            steps, _ = series(client, job_id, "train_loss")
            assert steps == list(range(1, STEPS + 1))  # metrics kept through the outage
            runs = step_runs(url, job_id)
            assert list(runs) == [1]
            assert [step for step, _, _ in runs[1]] == list(range(1, STEPS + 1))  # each once
            saved = [e["data"]["step"] for e in events(client, job_id) if e["type"] == "checkpoint"]
            assert saved == list(range(EVERY, STEPS + 1, EVERY))  # none lost to the outage
            client.close()
    finally:
        worker.stop()
        stop_embedded_postgres(folder)
