"""`dpo` jobs end to end, and the online algorithms that build on them: the real api,
PostgreSQL, Redis, a reward service and an `alignd worker` process. A DPO job against a
registered reference, then RTO with that DPO model's token rewards and SuperHF; each result is
served by the inference service."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.test_files import upload
from tests.conftest import BASE_MODEL_ID
from tests.data import jsonl, supervised_rows
from tests.trainer.test_dpo import pairs
from tests.trainer.test_online import DIGIT_SHARE, prompt_rows
from tests.trainer.test_reinforcement_job import FAST
from tests.trainer.test_worker import series, start_job, wait_status

pytestmark = pytest.mark.slow


def test_dpo_then_rto_and_superhf_jobs_train_and_are_served(
        client: httpx.Client, worker_factory: Any, inference_url: str,
        reward_service: str) -> None:
    worker = worker_factory(ALIGND_REWARD_URL=reward_service)
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
    assert_served(client, inference_url, job["fine_tuned_model"])

    prompts = upload(client, jsonl(prompt_rows(40)), "prompts").json()["id"]
    for algorithm, extra in (("rto", {"dpo_model": job["fine_tuned_model"]}), ("superhf", {})):
        response = client.post("/v1/fine_tuning/jobs", json={
            "model": BASE_MODEL_ID, "training_file": prompts, "suffix": algorithm, "seed": 3,
            "method": {"type": "reinforcement", "reinforcement": {
                "algorithm": algorithm, "reward": DIGIT_SHARE,
                "hyperparameters": {**FAST, **extra}}}})
        assert response.status_code == 200, response.text
        online = wait_status(client, response.json()["id"], {"succeeded", "failed"}, 300, worker)
        assert online["status"] == "succeeded", (algorithm, online)
        _, curve = series(client, online["id"], "reward_mean")
        assert sum(curve[-3:]) / 3 > sum(curve[:3]) / 3 + 0.05, (algorithm, curve)
        assert_served(client, inference_url, online["fine_tuned_model"])


def assert_served(client: httpx.Client, inference_url: str, model: str) -> None:
    served = httpx.post(f"{inference_url}/v1/completions", headers=client.headers, timeout=60,
                        json={"model": model, "prompt": "3+3=", "max_tokens": 4,
                              "temperature": 0})
    assert served.status_code == 200, served.text
