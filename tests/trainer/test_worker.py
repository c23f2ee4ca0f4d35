"""Jobs end to end: the real api, PostgreSQL, Redis and `alignd worker` processes training a
real tiny Llama. Covers success (full and LoRA), cancellation, failure, and a worker killed
with SIGKILL whose job resumes from its checkpoint on another worker."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.api.test_files import upload
from tests.conftest import BASE_MODEL_ID, wait_for
from tests.data import jsonl, supervised_rows

pytestmark = pytest.mark.slow
FAST_LEASES = {"ALIGND_LEASE_SECONDS": "4", "ALIGND_HEARTBEAT_SECONDS": "1",
               "ALIGND_SWEEP_SECONDS": "1"}


def files(client: httpx.Client, train: int = 96, valid: int = 32) -> tuple[str, str]:
    training = upload(client, jsonl(supervised_rows(train, seed=1))).json()["id"]
    validation = upload(client, jsonl(supervised_rows(valid, seed=2))).json()["id"]
    return training, validation


def start_job(client: httpx.Client, training: str, validation: str | None = None,
              **hyperparameters: object) -> str:
    body = {"model": BASE_MODEL_ID, "training_file": training, "validation_file": validation,
            "suffix": "t", "seed": 3,
            "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}}
    response = client.post("/v1/fine_tuning/jobs", json=body)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def wait_status(client: httpx.Client, job_id: str, statuses: set[str], timeout: float,
                worker: object = None) -> dict:
    def done() -> dict | None:
        job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        return job if job["status"] in statuses else None

    try:
        return wait_for(done, timeout, message=f"{job_id} to reach {statuses}")
    except AssertionError:
        raise AssertionError(worker.log() if worker else "no worker log") from None


def events(client: httpx.Client, job_id: str) -> list[dict]:
    return client.get(f"/v1/fine_tuning/jobs/{job_id}/events",
                      params={"order": "asc", "limit": 1000}).json()["data"]


def series(client: httpx.Client, job_id: str, name: str) -> tuple[list[int], list[float]]:
    data = client.get(f"/v1/fine_tuning/jobs/{job_id}/metrics", params={"name": name}).json()["data"]
    return (data[0]["steps"], data[0]["values"]) if data else ([], [])


@pytest.fixture(scope="module")
def shared_worker(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    from tests.conftest import WorkerProcess

    worker = WorkerProcess(service_env, tmp_path_factory.mktemp("w") / "worker.log",
                           ALIGND_TORCH_THREADS="1", **FAST_LEASES).start()
    yield worker
    worker.stop()


def test_supervised_job_trains_registers_and_lowers_held_out_loss(client, shared_worker) -> None:
    training, validation = files(client)
    job_id = start_job(client, training, validation, n_epochs=3, batch_size=16,
                       learning_rate=3e-3, eval_every=6, checkpoint_every=6)
    job = wait_status(client, job_id, {"succeeded", "failed"}, 300, shared_worker)
    assert job["status"] == "succeeded", job
    assert job["fine_tuned_model"] == f"ft:{BASE_MODEL_ID}:t:{job_id}"
    assert job["trained_tokens"] > 0 and job["attempts"] == 1

    steps, losses = series(client, job_id, "valid_loss")
    assert len(steps) >= 2 and losses[-1] < losses[0] * 0.8, losses
    train_steps, _ = series(client, job_id, "train_loss")
    assert train_steps == list(range(1, 19))  # ceil(96 * 3 / 16) optimizer steps
    from tests.trainer.test_worker_crash import step_runs

    assert {a: [s for s, _, _ in run] for a, run in step_runs(
        os.environ["ALIGND_DATABASE_URL"], job_id).items()} == {1: list(range(1, 19))}  # once
    statuses = [e["data"]["status"] for e in events(client, job_id) if e["type"] == "status"]
    assert statuses == ["validating_files", "queued", "running", "succeeded"]
    checkpoints = client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"]
    assert [c["step_number"] for c in checkpoints][:1] == [18]

    model = client.get(f"/v1/models/{job['fine_tuned_model']}").json()
    assert model["kind"] == "fine_tuned" and model["base_model"] == BASE_MODEL_ID
    from transformers import AutoModelForCausalLM

    path = Path(service_path(job_id))
    assert AutoModelForCausalLM.from_pretrained(path).num_parameters() > 0
    written = [path, *path.rglob("*"), *Path(service_path(job_id), "..", "..", "checkpoints",
                                               job_id).resolve().rglob("*")]
    shared = {str(p): oct(p.stat().st_mode & 0o777) for p in written if p.stat().st_mode & 0o077}
    assert len(written) > 10 and shared == {}  # the worker's files are its own (0600/0700)


def service_path(job_id: str) -> str:
    import os

    return os.path.join(os.environ["ALIGND_ARTIFACT_ROOT"], "models", job_id)


def test_lora_job_registers_an_adapter(client, shared_worker) -> None:
    training, _ = files(client, train=32)
    job_id = start_job(client, training, max_steps=4, batch_size=8, lora={"r": 4})
    job = wait_status(client, job_id, {"succeeded", "failed"}, 300, shared_worker)
    assert job["status"] == "succeeded", job
    model = client.get(f"/v1/models/{job['fine_tuned_model']}").json()
    assert model["kind"] == "lora_adapter"
    assert (Path(service_path(job_id)) / "adapter_config.json").exists()


def test_a_failing_job_records_why(client, shared_worker, database_url: str,
                                   unloadable_model_dir: Path) -> None:
    training, _ = files(client, train=8)
    with create_engine(database_url).begin() as conn:
        owner = conn.execute(text("select project_id from files where id = :f"),
                             {"f": training}).scalar_one()
        conn.execute(text("insert into models (id, project_id, kind, path) values "
                          "('broken-base', :p, 'base', :path)"),
                     {"p": owner, "path": str(unloadable_model_dir)})
    body = {"model": "broken-base", "training_file": training,
            "method": {"type": "supervised"}}
    job_id = client.post("/v1/fine_tuning/jobs", json=body).json()["id"]
    job = wait_status(client, job_id, {"failed", "succeeded"}, 120, shared_worker)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "training_error" and job["error"]["message"]
    assert events(client, job_id)[-1]["level"] == "error"
