"""A reward_model job end to end: the real api, PostgreSQL, Redis and an `alignd worker`
process training a reward head on a tiny real Llama, registered as kind reward_model."""

from __future__ import annotations

import random
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from transformers import AutoModelForSequenceClassification

from tests.api.test_files import upload
from tests.conftest import BASE_MODEL_ID
from tests.data import jsonl
from tests.trainer.test_worker import series, service_path, wait_status
from trainer.demo_world.datasets import preference_rows
from trainer.demo_world.task import make_problems

pytestmark = pytest.mark.slow


def preference_file(client: httpx.Client, n: int, seed: int) -> str:
    rows = preference_rows(make_problems(n, seed), random.Random(seed))
    return upload(client, jsonl(rows), "preference").json()["id"]


def test_reward_model_job_trains_and_registers_a_reward_model(
    client: httpx.Client, worker_factory, database_url: str
) -> None:
    worker = worker_factory()
    training, validation = preference_file(client, 48, 1), preference_file(client, 16, 2)
    hyperparameters = {"n_epochs": 2, "batch_size": 8, "learning_rate": 3e-3,
                       "eval_every": 6, "checkpoint_every": 6, "max_seq_length": 32}
    body = {"model": BASE_MODEL_ID, "training_file": training, "validation_file": validation,
            "suffix": "rm", "seed": 3,
            "method": {"type": "reward_model",
                       "reward_model": {"hyperparameters": hyperparameters}}}
    response = client.post("/v1/fine_tuning/jobs", json=body)
    assert response.status_code == 200, response.text
    job_id = response.json()["id"]
    assert response.json()["hyperparameters"]["ensemble_size"] == 1

    job = wait_status(client, job_id, {"succeeded", "failed"}, 300, worker)
    assert job["status"] == "succeeded", job
    steps, _ = series(client, job_id, "train_loss")
    assert steps == list(range(1, 13))  # 48 pairs * 2 epochs / 8
    valid_steps, accuracy = series(client, job_id, "valid_pairwise_accuracy")
    assert valid_steps == [6, 12] and all(0 <= a <= 1 for a in accuracy)
    assert series(client, job_id, "pairwise_accuracy")[0] == steps

    model = client.get(f"/v1/models/{job['fine_tuned_model']}").json()
    assert model["kind"] == "reward_model" and model["base_model"] == BASE_MODEL_ID
    listed = client.get("/v1/models").json()["data"]
    assert any(m["id"] == job["fine_tuned_model"] and m["kind"] == "reward_model" for m in listed)
    with create_engine(database_url).connect() as conn:
        metadata = conn.execute(text("select metadata from models where id = :m"),
                                {"m": job["fine_tuned_model"]}).scalar_one()
    assert metadata["objectives"] == ["reward"] and "final_metrics" in metadata
    reward_model = AutoModelForSequenceClassification.from_pretrained(Path(service_path(job_id)))
    assert reward_model.config.num_labels == 1


def test_a_reward_model_job_refuses_supervised_files_and_bad_types(client: httpx.Client) -> None:
    supervised = upload(client, jsonl([{"prompt": "1+1=", "completion": "2"}])).json()["id"]
    body = {"model": BASE_MODEL_ID, "training_file": supervised,
            "method": {"type": "reward_model"}}
    error = client.post("/v1/fine_tuning/jobs", json=body).json()["error"]
    assert error["param"] == "training_file" and "preference" in error["message"]
    body["method"] = {"type": "reward_modle"}
    error = client.post("/v1/fine_tuning/jobs", json=body).json()["error"]
    assert error["param"] == "method.type" and "reward_model" in error["message"]
