"""A `dpo` job end to end: the real api, PostgreSQL, Redis and an `alignd worker` process,
against a registered fine-tuned model as its reference; the result is then served by the
inference service."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.test_files import upload
from tests.conftest import BASE_MODEL_ID
from tests.data import jsonl, supervised_rows
from tests.trainer.test_dpo import pairs
from tests.trainer.test_worker import series, start_job, wait_status

pytestmark = pytest.mark.slow


def test_a_dpo_job_against_a_registered_reference_trains_and_is_served(
        client: httpx.Client, worker_factory: Any, inference_url: str) -> None:
    worker = worker_factory()
    sft_file = upload(client, jsonl(supervised_rows(16))).json()["id"]
    sft = wait_status(client, start_job(client, sft_file, max_steps=2, batch_size=8),
                      {"succeeded", "failed"}, 300, worker)
    assert sft["status"] == "succeeded", sft
    training = upload(client, jsonl(pairs(32)), "preference").json()["id"]
    validation = upload(client, jsonl(pairs(40)[32:]), "preference").json()["id"]
    response = client.post("/v1/fine_tuning/jobs", json={
        "model": BASE_MODEL_ID, "training_file": training, "validation_file": validation,
        "suffix": "dpo", "seed": 2, "method": {"type": "dpo", "dpo": {"hyperparameters": {
            "beta": 0.5, "batch_size": 8, "n_epochs": 3, "learning_rate": 1e-3,
            "reference": sft["fine_tuned_model"], "eval_every": 4}}}})
    assert response.status_code == 200, response.text
    job = wait_status(client, response.json()["id"], {"succeeded", "failed"}, 300, worker)
    assert job["status"] == "succeeded", job
    steps, accuracy = series(client, job["id"], "valid_reward_accuracy")
    assert steps == [4, 8, 12] and accuracy[-1] == 1.0
    _, loss = series(client, job["id"], "loss")
    assert loss[-1] < loss[0]
    model = client.get(f"/v1/models/{job['fine_tuned_model']}").json()
    assert model["kind"] == "fine_tuned"
    served = httpx.post(f"{inference_url}/v1/completions", headers=client.headers, timeout=60,
                        json={"model": job["fine_tuned_model"], "prompt": "3+3=",
                              "max_tokens": 4, "temperature": 0})
    assert served.status_code == 200, served.text
