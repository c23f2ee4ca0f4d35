"""The reinforcement method at job creation on the real api and PostgreSQL: a GRPO job with its
defaults, OpenAI's shape (`grader`, no algorithm), and bad algorithms, options, rewards and files
refused with a 400 in the error envelope that names the field and stores nothing. No worker
consumes the queue here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.test_files import assert_envelope, upload
from tests.api.test_jobs import job_rows
from tests.conftest import BASE_MODEL_ID
from tests.data import jsonl

SECTION = "method.reinforcement"
HYPERPARAMETERS = f"{SECTION}.hyperparameters"
EXACT = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
         "reference": "{{item.answer}}", "operation": "eq"}


@pytest.fixture
def prompts(client: httpx.Client) -> str:
    rows = [{"prompt": f"{a}+{a}=", "answer": str(2 * a)} for a in range(6)]
    return upload(client, jsonl(rows), "prompts").json()["id"]


def create(client: httpx.Client, training_file: str, section: dict[str, Any]) -> httpx.Response:
    body = {"model": BASE_MODEL_ID, "training_file": training_file,
            "method": {"type": "reinforcement", "reinforcement": section}}
    return client.post("/v1/fine_tuning/jobs", json=body)


def test_a_grpo_job_is_queued_with_its_defaults(client: httpx.Client, prompts: str) -> None:
    response = create(client, prompts, {"algorithm": "grpo", "reward": EXACT})
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "queued"
    section = job["method"]["reinforcement"]
    assert section["algorithm"] == "grpo" and section["reward"] == EXACT
    shown = job["hyperparameters"]
    assert shown["algorithm"] == "grpo" and shown["group_size"] == 4
    assert shown["prompts_per_step"] == 8 and shown["scale_rewards"] is True
    assert shown["beta"] == 0.0 and shown["kl_in"] == "loss" and shown["lr_scheduler"] == "constant"


def test_openais_grader_and_no_algorithm_is_a_grpo_job(client: httpx.Client,
                                                       prompts: str) -> None:
    response = create(client, prompts, {"grader": EXACT, "hyperparameters": {"group_size": 2}})
    assert response.status_code == 200, response.text
    section = client.get(f"/v1/fine_tuning/jobs/{response.json()['id']}").json()["method"][
        "reinforcement"]
    assert section["algorithm"] == "grpo" and section["reward"] == EXACT
    assert "grader" not in section and section["hyperparameters"]["group_size"] == 2


@pytest.mark.parametrize("section, param, words", [
    ({"algorithm": "dpo", "reward": EXACT}, f"{SECTION}.algorithm",
     "choose one of grpo, rloo, remax, ngrpo, ppo, rto, superhf, got 'dpo'"),
    ({"reward": EXACT, "hyperparameters": {"group_size": 300}}, f"{HYPERPARAMETERS}.group_size",
     "less than or equal to 256, got 300"),
    ({"reward": EXACT, "hyperparameters": {"top_p": 0}}, f"{HYPERPARAMETERS}.top_p",
     "greater than 0"),
    ({"reward": EXACT, "hyperparameters": {"r_max": 0.5}}, f"{HYPERPARAMETERS}.r_max",
     "r_max is an option of algorithm 'ngrpo', not 'grpo'; remove it or set algorithm to 'ngrpo'"),
    ({"algorithm": "ppo", "reward": EXACT, "hyperparameters": {"scale_rewards": False}},
     f"{HYPERPARAMETERS}.scale_rewards", "set algorithm to 'grpo'"),
    ({"reward": EXACT, "hyperparameters": {"n_epochs": 2}}, f"{HYPERPARAMETERS}.n_epochs",
     "unknown field"),
    ({"reward": EXACT, "grader": EXACT}, f"{SECTION}.grader", "give one of them"),
    ({}, f"{SECTION}.reward", "reward (or OpenAI's grader)"),
    ({"reward": {"name": "no type"}}, f"{SECTION}.reward", "'type'"),
    ({"reward": EXACT, "hyperparameters": {"group_size": 1}}, f"{HYPERPARAMETERS}.group_size",
     "at least 2 for algorithm 'grpo'"),
    ({"reward": EXACT, "hyperparameters": {"minibatch_size": 64}},
     f"{HYPERPARAMETERS}.minibatch_size", "prompts_per_step × group_size = 8 × 4 = 32, got 64"),
    ({"reward": EXACT, "hyperparameters": {"policy_filter": {"strategy": "best", "keep": 4}}},
     f"{HYPERPARAMETERS}.policy_filter.keep", "less than group_size (4)"),
    ({"reward": EXACT, "hyperparameters": {"max_new_tokens": 64, "max_seq_length": 64}},
     f"{HYPERPARAMETERS}.max_new_tokens", "less than max_seq_length (64)"),
    ({"algorithm": "ppo", "reward": EXACT, "hyperparameters": {"critic_model": "rm-none"}},
     f"{HYPERPARAMETERS}.critic_model", "model 'rm-none' does not exist"),
    ({"algorithm": "ppo", "reward": EXACT, "hyperparameters": {"critic_model": BASE_MODEL_ID}},
     f"{HYPERPARAMETERS}.critic_model", "is a base; it must be a reward_model"),
    ({"algorithm": "rto", "reward": EXACT}, f"{HYPERPARAMETERS}.dpo_model", "Field required"),
    ({"algorithm": "rto", "reward": EXACT, "hyperparameters": {"dpo_model": "ft:none"}},
     f"{HYPERPARAMETERS}.dpo_model", "model 'ft:none' does not exist"),
    ({"algorithm": "rto", "reward": EXACT, "hyperparameters": {"dpo_model": BASE_MODEL_ID}},
     f"{HYPERPARAMETERS}.dpo_model", "is a base; it must be a fine_tuned"),
    ({"algorithm": "superhf", "reward": EXACT,
      "hyperparameters": {"policy_filter": {"strategy": "best", "keep": 2}}},
     f"{HYPERPARAMETERS}.policy_filter", "keeps the best response of each prompt itself"),
    ({"reward": EXACT, "hyperparameters": {"beta_dpo": 0.1}}, f"{HYPERPARAMETERS}.beta_dpo",
     "set algorithm to 'rto'"),
    # Specs the reward service refuses (the api asks it before storing anything):
    ({"reward": {"type": "reward_model", "model": "rm-nobody-has"}}, f"{SECTION}.reward.model",
     "model 'rm-nobody-has' does not exist"),
    ({"reward": {"type": "python", "name": "p", "source": "def grade(sample, item:\n"}},
     f"{SECTION}.reward.source", "does not compile"),
    ({"grader": {**EXACT, "operation": "regex"}}, f"{SECTION}.reward.operation", "'eq'"),
])
def test_bad_reinforcement_jobs_are_400s_that_store_nothing(
    client: httpx.Client, prompts: str, database_url: str, section: dict[str, Any], param: str,
    words: str
) -> None:
    _, before = job_rows(database_url, "")
    error = assert_envelope(create(client, prompts, section), 400)
    assert error["param"] == param and error["type"] == "invalid_request_error", error
    assert words in error["message"], error
    _, after = job_rows(database_url, "")
    assert after == before


def test_a_reinforcement_job_trains_on_prompts_only(client: httpx.Client, prompts: str,
                                                    database_url: str) -> None:
    preference = upload(client, jsonl([{"prompt": "1+1=", "chosen": "2", "rejected": "3"}]),
                        "preference").json()["id"]
    _, before = job_rows(database_url, "")
    error = assert_envelope(create(client, preference, {"reward": EXACT}), 400)
    assert error["param"] == "training_file", error
    assert "purpose 'preference'; a reinforcement job needs one of prompts" in error["message"]
    _, after = job_rows(database_url, "")
    assert after == before


def test_another_projects_reward_model_is_refused_as_unknown(
    client: httpx.Client, admin: httpx.Client, prompts: str, database_url: str,
    tiny_model_dir: Path,
) -> None:
    from services.db.engine import session_factory, session_scope
    from services.registry import register_model
    from tests.conftest import new_project

    other, _ = new_project(admin)
    model_id = f"rm-{other}"
    with session_scope(session_factory(database_url)) as session:
        register_model(session, model_id=model_id, project_id=other, kind="reward_model",
                       path=str(tiny_model_dir), base_model=BASE_MODEL_ID, job_id="job-x")
    _, before = job_rows(database_url, "")
    error = assert_envelope(create(client, prompts, {"reward": {"type": "reward_model",
                                                                "model": model_id}}), 400)
    assert error["param"] == f"{SECTION}.reward.model", error
    assert f"model {model_id!r} does not exist" in error["message"]
    assert job_rows(database_url, "")[1] == before


def test_a_reward_service_that_cannot_be_reached_gives_no_verdict() -> None:
    from api.reward_check import RewardSpecCheck
    from services.web import free_port

    check = RewardSpecCheck(f"http://127.0.0.1:{free_port()}", None, timeout=2)
    assert check(EXACT, "proj-x", f"{SECTION}.reward") is False
