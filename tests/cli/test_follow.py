"""`alignd jobs follow` on real jobs (the api, PostgreSQL, Redis and an `alignd worker`
training the tiny Llama): the progress it shows and the job's end as its exit status. And the
step count it expects, checked against the trainer's own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from cli.follow import JOB_EXIT_STATUS, expected_steps
from services.methods.reward_model import RewardModelHyperparameters
from tests.api.test_files import upload
from tests.cli.test_user import alignd
from tests.conftest import WorkerProcess
from tests.data import jsonl, supervised_rows
from tests.trainer.test_worker import start_job
from trainer.checkpoint import TrainingState
from trainer.loop import count_steps


@pytest.mark.parametrize("n_rows, batch_size, accumulation, n_epochs, max_steps, members", [
    (20, 8, 1, 2, None, 1), (96, 16, 1, 3, None, 1), (7, 2, 2, 3, None, 1), (50, 4, 1, 1, 5, 1),
    (10, 4, 1, 2, None, 3), (30, 4, 2, 2, 3, 2), (9, 3, 1, 1, None, 1)])
def test_expected_steps_is_the_trainers_count(n_rows: int, batch_size: int, accumulation: int,
                                              n_epochs: int, max_steps: int | None,
                                              members: int) -> None:
    """At every step of every member, from the `epoch` metric as the step loop reports it
    (rows read / rows), each member reading the rows afresh as the reward model's do."""
    hp = RewardModelHyperparameters(batch_size=batch_size, n_epochs=n_epochs,
                                    gradient_accumulation_steps=accumulation,
                                    max_steps=max_steps, ensemble_size=members)
    per_member = count_steps(n_rows, hp)
    rows_per_step = batch_size * accumulation
    step = 0
    for member in range(members):
        state = TrainingState(step, 0, 0, 0)
        for _ in range(per_member):
            position = state.rows_consumed(n_rows)
            state = state.after_step(n_rows, min(rows_per_step, n_rows * n_epochs - position), 0)
            step = state.step
            epoch = state.rows_consumed(n_rows) / n_rows
            assert expected_steps(hp.model_dump(), step, epoch, member) == per_member * members


def test_expected_steps_without_epochs_or_metrics() -> None:
    assert expected_steps({"max_steps": 40}, 3, 0.1) == 40  # online RL: max_steps
    assert expected_steps({"n_epochs": 2, "max_steps": None}, 0, None) is None


@pytest.fixture(scope="module")
def worker(service_env: dict[str, str],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    process = WorkerProcess(service_env, tmp_path_factory.mktemp("w") / "worker.log",
                            ALIGND_TORCH_THREADS="1").start()
    yield process
    process.stop()


@pytest.mark.slow
def test_follow_shows_steps_and_metrics_and_exits_0_when_the_job_succeeds(
        api_url: str, key: str, client: httpx.Client, worker: WorkerProcess) -> None:
    training = upload(client, jsonl(supervised_rows(20, seed=1))).json()["id"]
    job_id = start_job(client, training, n_epochs=2, batch_size=8)  # ceil(20 · 2 / 8) steps
    followed = alignd("jobs", "follow", job_id, url=api_url, key=key)
    assert followed.exit_code == JOB_EXIT_STATUS["succeeded"] == 0, (followed.output,
                                                                     worker.log())
    shown = followed.stdout
    assert "job succeeded; model ft:" in shown and "5/5 steps" in shown, shown
    assert client.get(f"/v1/fine_tuning/jobs/{job_id}").json()["total_steps"] == 5  # trainer's
    assert "train_loss " in shown, shown
    again = alignd("jobs", "events", job_id, "--follow", url=api_url, key=key)
    assert again.exit_code == 0 and "5/5 steps" in again.stdout

    chart = alignd("jobs", "metrics", job_id, "--plot", "-n", "train_loss", url=api_url, key=key)
    assert chart.exit_code == 0 and chart.stdout.count("train_loss") == 1


@pytest.mark.slow
def test_follow_exits_3_when_the_job_fails(api_url: str, key: str, client: httpx.Client,
                                           worker: WorkerProcess, database_url: str,
                                           unloadable_model_dir: Path) -> None:
    training = upload(client, jsonl(supervised_rows(8))).json()["id"]
    with create_engine(database_url).begin() as conn:
        owner = conn.execute(text("select project_id from files where id = :f"),
                             {"f": training}).scalar_one()
        conn.execute(text("insert into models (id, project_id, kind, path) values "
                          "(:m, :p, 'base', :path)"),
                     {"m": f"broken-{owner}", "p": owner, "path": str(unloadable_model_dir)})
    body = {"model": f"broken-{owner}", "training_file": training,
            "method": {"type": "supervised"}}
    job_id = client.post("/v1/fine_tuning/jobs", json=body).json()["id"]
    followed = alignd("jobs", "follow", job_id, url=api_url, key=key)
    assert followed.exit_code == JOB_EXIT_STATUS["failed"] == 3, (followed.output, worker.log())
    assert "job failed" in followed.stdout


def test_follow_exits_4_for_a_cancelled_job(api_url: str, key: str,
                                            client: httpx.Client) -> None:
    training = upload(client, jsonl(supervised_rows(8))).json()["id"]
    job_id = start_job(client, training, n_epochs=100)
    client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    followed = alignd("jobs", "follow", job_id, url=api_url, key=key)
    assert followed.exit_code == JOB_EXIT_STATUS["cancelled"] == 4, followed.output
    assert "cancelled" in followed.stdout

