"""Reinforcement jobs end to end: the real api, PostgreSQL, Redis, a reward service on loopback
and `alignd worker` processes. Each algorithm raises its reward on an easy task and its model
is then served by the inference service; a worker killed mid-job is resumed from its last
checkpoint and the job finishes."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.test_files import upload
from tests.conftest import BASE_MODEL_ID, wait_for
from tests.data import jsonl
from tests.trainer.test_online import DIGIT_SHARE, prompt_rows
from tests.trainer.test_worker import FAST_LEASES, events, series, wait_status
from tests.trainer.test_worker_crash import step_runs

pytestmark = pytest.mark.slow

FAST = {"prompts_per_step": 8, "group_size": 4, "max_new_tokens": 8, "learning_rate": 3e-3,
        "max_steps": 10, "checkpoint_every": 5, "eval_every": 5}


def create(client: httpx.Client, training: str, validation: str | None = None,
           **reinforcement: Any) -> str:
    response = client.post("/v1/fine_tuning/jobs", json={
        "model": BASE_MODEL_ID, "training_file": training, "validation_file": validation,
        "suffix": "rl", "seed": 11, "method": {"type": "reinforcement",
                                                "reinforcement": reinforcement}})
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def test_every_algorithm_raises_its_reward_and_its_model_is_served(
    client: httpx.Client, worker_factory: Any, reward_service: str,
    inference_url: str,
) -> None:
    worker = worker_factory(ALIGND_REWARD_URL=reward_service)
    training = upload(client, jsonl(prompt_rows(40)), "prompts").json()["id"]
    validation = upload(client, jsonl(prompt_rows(6)), "prompts").json()["id"]
    jobs = {
        # OpenAI's shape: a grader, no algorithm (GRPO).
        "grpo": create(client, training, validation, grader=DIGIT_SHARE,
                       hyperparameters=FAST),
        **{algorithm: create(client, training, algorithm=algorithm, reward=DIGIT_SHARE,
                             hyperparameters=FAST)
           for algorithm in ("rloo", "remax", "ngrpo", "ppo")},
    }
    for algorithm, job_id in jobs.items():
        job = wait_status(client, job_id, {"succeeded", "failed"}, 600, worker)
        assert job["status"] == "succeeded", (algorithm, job)
        steps, curve = series(client, job_id, "reward_mean")
        assert steps == list(range(1, 11)), algorithm
        assert sum(curve[-3:]) / 3 > sum(curve[:3]) / 3 + 0.05, (algorithm, curve)
        model = client.get(f"/v1/models/{job['fine_tuned_model']}").json()
        assert model["kind"] == "fine_tuned" and model["base_model"] == BASE_MODEL_ID
        served = httpx.post(f"{inference_url}/v1/completions", headers=client.headers,
                            json={"model": job["fine_tuned_model"], "prompt": "3+4=",
                                  "max_tokens": 6, "temperature": 0}, timeout=60)
        assert served.status_code == 200, served.text
        assert served.json()["model"] == job["fine_tuned_model"]
    assert series(client, jobs["grpo"], "valid_reward_mean")[0] == [5, 10]
    assert client.get(f"/v1/fine_tuning/jobs/{jobs['grpo']}").json()["method"][
        "reinforcement"]["algorithm"] == "grpo"


def test_a_killed_worker_s_reinforcement_job_resumes_and_finishes(
    client: httpx.Client, worker_factory: Any, reward_service: str, database_url: str,
) -> None:
    training = upload(client, jsonl(prompt_rows(40)), "prompts").json()["id"]
    job_id = create(client, training, reward=DIGIT_SHARE,
                    hyperparameters={**FAST, "max_steps": 24, "checkpoint_every": 4,
                                     "learning_rate": 1e-4})
    first = worker_factory(ALIGND_REWARD_URL=reward_service, **FAST_LEASES)

    def checkpointed() -> int | None:
        data = client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"]
        return data[0]["step_number"] if data else None

    killed_after = wait_for(checkpointed, 300, interval=0.05, message="a first checkpoint")
    first.kill()
    second = worker_factory(ALIGND_REWARD_URL=reward_service, **FAST_LEASES)
    job = wait_status(client, job_id, {"succeeded", "failed"}, 600, second)
    assert job["status"] == "succeeded", job
    messages = [e["message"] for e in events(client, job_id)]
    resumed = [m for m in messages if m.startswith("resumed from checkpoint at step")]
    assert len(resumed) == 1, messages
    resumed_at = int(resumed[0].rsplit(" ", 1)[-1])
    assert killed_after <= resumed_at < 24
    assert series(client, job_id, "reward_mean")[0] == list(range(1, 25))
    # one start and one resume, and per attempt each step once (`job_steps`, append-only):
    # the second attempt runs exactly the steps after the checkpoint it resumed from
    assert job["attempts"] == 2
    runs = step_runs(database_url, job_id)
    assert sorted(runs) == [1, 2]
    first_steps, second_steps = ([step for step, _, _ in runs[a]] for a in (1, 2))
    assert first_steps == list(range(1, first_steps[-1] + 1))
    assert first_steps[-1] >= resumed_at
    assert second_steps == list(range(resumed_at + 1, 25))
