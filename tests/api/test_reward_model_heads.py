"""The reward_model method's `head` at job creation on the real api and PostgreSQL: the implicit
head's defaults are filled and shown, and a bad combination of head, hyperparameters and file
purpose is a 400 in the error envelope that stores nothing."""

from __future__ import annotations

import random
from typing import Any

import httpx
import pytest

from tests.api.test_files import assert_envelope, upload
from tests.api.test_jobs import job_rows
from tests.conftest import BASE_MODEL_ID
from tests.data import jsonl
from trainer.demo_world.datasets import preference_rows, rating_rows
from trainer.demo_world.task import make_problems

HYPERPARAMETERS = "method.reward_model.hyperparameters"


@pytest.fixture
def files(client: httpx.Client) -> dict[str, str]:
    problems = make_problems(4, seed=0)
    rows = {"preference": preference_rows(problems, random.Random(0)),
            "ratings": rating_rows(problems, random.Random(0))}
    return {purpose: upload(client, jsonl(content), purpose).json()["id"]
            for purpose, content in rows.items()}


def create(client: httpx.Client, training_file: str, hyperparameters: dict[str, Any],
           **overrides: Any) -> httpx.Response:
    body = {"model": BASE_MODEL_ID, "training_file": training_file,
            "method": {"type": "reward_model",
                       "reward_model": {"hyperparameters": hyperparameters}}, **overrides}
    return client.post("/v1/fine_tuning/jobs", json=body)


def test_an_implicit_job_shows_its_head_and_defaults(client: httpx.Client,
                                                     files: dict[str, str]) -> None:
    response = create(client, files["preference"], {"head": "implicit", "beta": 0.25})
    assert response.status_code == 200, response.text
    shown = response.json()["hyperparameters"]
    assert shown["head"] == "implicit" and shown["beta"] == 0.25
    assert shown["reference"] == "none" and shown["sft_coefficient"] == 1.0
    classifier = create(client, files["ratings"], {}).json()["hyperparameters"]
    assert classifier["head"] == "classifier" and classifier["beta"] is None


@pytest.mark.parametrize("hyperparameters, purpose, param, words", [
    ({"beta": 0.5}, "preference", HYPERPARAMETERS, "beta: only for head 'implicit'"),
    ({"head": "classifier", "reference": "base"}, "preference", HYPERPARAMETERS,
     "reference: only for head 'implicit'"),
    ({"head": "implicit", "center_rewards_coefficient": 0.01}, "preference", HYPERPARAMETERS,
     "center_rewards_coefficient: only for head 'classifier'"),
    ({"head": "implicit", "reference": "sft"}, "preference", f"{HYPERPARAMETERS}.reference",
     "'none' or 'base'"),
    ({"head": "implicit", "beta": -1}, "preference", f"{HYPERPARAMETERS}.beta", "greater than 0"),
    ({"head": "implicit"}, "ratings", "training_file",
     "a reward_model job with head 'implicit' needs one of preference, fine-tune"),
])
def test_bad_head_combinations_are_400s_that_store_nothing(
    client: httpx.Client, files: dict[str, str], database_url: str,
    hyperparameters: dict[str, Any], purpose: str, param: str, words: str
) -> None:
    _, before = job_rows(database_url, "")
    error = assert_envelope(create(client, files[purpose], hyperparameters), 400)
    assert error["param"] == param and error["type"] == "invalid_request_error", error
    assert words in error["message"], error
    _, after = job_rows(database_url, "")
    assert after == before


def test_an_implicit_job_refuses_a_ratings_validation_file(client: httpx.Client,
                                                           files: dict[str, str]) -> None:
    response = create(client, files["preference"], {"head": "implicit"},
                      validation_file=files["ratings"])
    error = assert_envelope(response, 400)
    assert error["param"] == "validation_file" and "purpose 'ratings'" in error["message"]
