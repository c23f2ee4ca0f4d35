"""Files in the shapes people bring, trained end to end: the real api, PostgreSQL, Redis, a
reward service on loopback and `alignd worker` processes on the tiny base model. OpenAI's
reinforcement fine-tuning file (purpose fine-tune) through a `reinforcement` job graded on
`{{item.answer}}`; TRL's conversational preference and prompt/completion files through `dpo`
and `supervised` jobs. Every job is a couple of steps."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.test_files import upload
from tests.conftest import BASE_MODEL_ID
from tests.data import jsonl
from tests.services.test_datasets import TOOLS
from tests.trainer.test_worker import series, wait_status
from trainer.online.scoring import reward_item, score_items

pytestmark = pytest.mark.slow

EXACT = {"type": "string_check", "name": "exact", "operation": "eq",
         "input": "{{sample.output_text}}", "reference": "{{item.answer}}"}


def asked(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def answered(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def rft_rows(n: int) -> list[dict[str, Any]]:
    """OpenAI's RFT shape: messages ending with the user's turn, tools, the grader's fields."""
    return [{"messages": [{"role": "system", "content": "Add."}, *asked(f"{i}+{i % 7}=")],
             "tools": TOOLS, "answer": str(i + i % 7), "source": "sums"} for i in range(n)]


def create(client: httpx.Client, training: str, method_type: str,
           section: dict[str, Any]) -> str:
    response = client.post("/v1/fine_tuning/jobs", json={
        "model": BASE_MODEL_ID, "training_file": training, "suffix": method_type[:8], "seed": 4,
        "method": {"type": method_type, method_type: section}})
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def test_an_openai_rft_file_trains_a_reinforcement_job(
        client: httpx.Client, worker_factory: Any, reward_service: str) -> None:
    row = rft_rows(1)[0]
    graded = score_items(reward_service, [reward_item(row, row["answer"]),
                                          reward_item(row, "no")], EXACT)
    assert graded == [1.0, 0.0]  # the grader reads the row's own field
    uploaded = upload(client, jsonl(rft_rows(8)), "fine-tune").json()
    assert uploaded["shapes"] == ["openai_rft"]
    worker = worker_factory(ALIGND_REWARD_URL=reward_service)
    job_id = create(client, uploaded["id"], "reinforcement", {"grader": EXACT, "hyperparameters": {
        "prompts_per_step": 4, "group_size": 2, "max_new_tokens": 4, "max_steps": 2,
        "checkpoint_every": 2}})
    job = wait_status(client, job_id, {"succeeded", "failed"}, 300, worker)
    assert job["status"] == "succeeded", job
    steps, rewards = series(client, job_id, "reward_mean")
    assert steps == [1, 2] and all(0.0 <= reward <= 1.0 for reward in rewards)


def test_trl_conversational_files_train_dpo_and_supervised_jobs(
        client: httpx.Client, worker_factory: Any) -> None:
    pairs = [{"prompt": asked(f"{i}+{i % 5}="), "chosen": answered(str(i + i % 5)),
              "rejected": answered("xq")} for i in range(8)]
    demonstrations = [{"prompt": [*asked(f"{i}+1="), *answered(str(i + 1)), *asked(f"{i}+2=")],
                       "completion": answered(str(i + 2))} for i in range(8)]
    preference = upload(client, jsonl(pairs), "preference").json()
    supervised = upload(client, jsonl(demonstrations), "fine-tune").json()
    assert preference["shapes"] == ["conversational_preference"]
    assert supervised["shapes"] == ["conversational_prompt_completion"]
    worker = worker_factory()
    jobs = {
        "dpo": create(client, preference["id"], "dpo", {"hyperparameters": {
            "batch_size": 4, "max_steps": 2, "beta": 0.5, "learning_rate": 1e-3}}),
        "supervised": create(client, supervised["id"], "supervised", {"hyperparameters": {
            "batch_size": 4, "max_steps": 2}}),
    }
    for name, job_id in jobs.items():
        job = wait_status(client, job_id, {"succeeded", "failed"}, 300, worker)
        assert job["status"] == "succeeded", (name, job)
        assert job["trained_tokens"] > 0, (name, job)
        model = client.get(f"/v1/models/{job['fine_tuned_model']}").json()
        assert model["kind"] == "fine_tuned", (name, model)
    steps, accuracy = series(client, jobs["dpo"], "reward_accuracy")
    assert steps == [1, 2] and all(0.0 <= value <= 1.0 for value in accuracy)
    assert series(client, jobs["supervised"], "train_loss")[0] == [1, 2]
