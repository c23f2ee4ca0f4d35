"""A value_model job end to end: the real api, PostgreSQL, Redis, a reward service on loopback
and an `alignd worker` process, registering a value model tied to its base; and the api's
400s for bad value_model sections."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from transformers import AutoModelForTokenClassification, AutoTokenizer

from tests.api.test_files import upload
from tests.conftest import BASE_MODEL_ID
from tests.data import jsonl
from tests.trainer.test_value_model import prompt_rows
from tests.trainer.test_worker import series, service_path, wait_status

CONTAINS_THE_ANSWER = {"type": "string_check", "name": "has_answer", "operation": "like",
                       "input": "{{sample.output_text}}", "reference": "{{item.answer}}"}


def prompts_file(client: httpx.Client, n: int, seed: int) -> str:
    return upload(client, jsonl(prompt_rows(n, seed)), "prompts").json()["id"]


def create(client: httpx.Client, training_file: str, **hyperparameters: object) -> httpx.Response:
    return client.post("/v1/fine_tuning/jobs", json={
        "model": BASE_MODEL_ID, "training_file": training_file, "suffix": "vm", "seed": 5,
        "method": {"type": "value_model", "value_model": {"hyperparameters": hyperparameters}}})


@pytest.mark.slow
def test_value_model_job_trains_and_registers_a_value_model_tied_to_its_base(
    client: httpx.Client, worker_factory, reward_service: str, database_url: str,
    tiny_model_dir: Path,
) -> None:
    worker = worker_factory(ALIGND_REWARD_URL=reward_service)
    training = prompts_file(client, 8, 1)
    response = create(client, training, reward=CONTAINS_THE_ANSWER, samples_per_prompt=2,
                      max_new_tokens=8, max_seq_length=32, batch_size=8, n_epochs=2,
                      learning_rate=1e-3, checkpoint_every=2, **{"lambda": 0.9})
    assert response.status_code == 200, response.text
    job_id = response.json()["id"]
    assert response.json()["hyperparameters"]["lambda"] == 0.9
    assert response.json()["hyperparameters"]["gamma"] == 1.0

    job = wait_status(client, job_id, {"succeeded", "failed"}, 300, worker)
    assert job["status"] == "succeeded", job
    steps, _ = series(client, job_id, "value_loss")
    assert steps == [1, 2, 3, 4]  # 16 completions * 2 epochs / 8
    for name in ("explained_variance", "mean_reward", "learning_rate"):
        assert series(client, job_id, name)[0] == steps

    model = client.get(f"/v1/models/{job['fine_tuned_model']}").json()
    assert model["kind"] == "value_model" and model["base_model"] == BASE_MODEL_ID
    with create_engine(database_url).connect() as conn:
        metadata = conn.execute(text("select metadata from models where id = :m"),
                                {"m": job["fine_tuned_model"]}).scalar_one()
    assert {key: metadata[key] for key in ("gamma", "lambda", "reward", "base_model")} == {
        "gamma": 1.0, "lambda": 0.9, "reward": CONTAINS_THE_ANSWER, "base_model": BASE_MODEL_ID}
    folder = Path(service_path(job_id))
    value_model = AutoModelForTokenClassification.from_pretrained(folder)
    assert value_model.config.num_labels == 1
    assert AutoTokenizer.from_pretrained(folder).get_vocab() == \
        AutoTokenizer.from_pretrained(tiny_model_dir).get_vocab()


@pytest.mark.parametrize("hyperparameters, param, says", [
    ({}, "method.value_model.hyperparameters.reward", "Field required"),
    ({"reward": CONTAINS_THE_ANSWER, "lambda": 1.5}, "method.value_model.hyperparameters.lambda",
     "less than or equal to 1"),
    ({"reward": CONTAINS_THE_ANSWER, "lambda_": 0.5},
     "method.value_model.hyperparameters.lambda_", "unknown field"),
    ({"reward": "exact match"}, "method.value_model.hyperparameters.reward", "dictionary"),
    ({"reward": {"name": "x"}}, "method.value_model.hyperparameters.reward", "'type'"),
])
def test_bad_value_model_sections_are_400_naming_the_field(
    client: httpx.Client, hyperparameters: dict, param: str, says: str
) -> None:
    response = create(client, prompts_file(client, 2, 0), **hyperparameters)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and says in error["message"], error


def test_a_value_model_job_needs_a_prompts_file(client: httpx.Client) -> None:
    supervised = upload(client, jsonl([{"prompt": "1+1=", "completion": "2"}])).json()["id"]
    response = create(client, supervised, reward=CONTAINS_THE_ANSWER)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "training_file" and "prompts" in error["message"]
