"""`dpo` jobs at creation on the real api and PostgreSQL: OpenAI's shape with its defaults, and
bad losses, options, references and files refused with a 400 that names the field and stores
nothing; pairs that prefer nothing are refused at upload with their line number."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.test_files import assert_envelope, upload
from tests.api.test_jobs import job_rows
from tests.conftest import BASE_MODEL_ID
from tests.data import jsonl, supervised_rows

HYPERPARAMETERS = "method.dpo.hyperparameters"
PAIRS = [{"prompt": "1+1=", "chosen": "2", "rejected": "3"},
         {"input": {"messages": [{"role": "user", "content": "2+2="}]},
          "preferred_output": [{"role": "assistant", "content": "4"}],
          "non_preferred_output": [{"role": "assistant", "content": "5"}]}]


@pytest.fixture
def preference(client: httpx.Client) -> str:
    return upload(client, jsonl(PAIRS), "preference").json()["id"]


def create(client: httpx.Client, training_file: str, **hyperparameters: Any) -> httpx.Response:
    return client.post("/v1/fine_tuning/jobs", json={
        "model": BASE_MODEL_ID, "training_file": training_file,
        "method": {"type": "dpo", "dpo": {"hyperparameters": hyperparameters}}})


def test_a_dpo_job_is_queued_with_its_defaults(client: httpx.Client, preference: str) -> None:
    response = create(client, preference, beta=0.2, loss="conservative")
    assert response.status_code == 200, response.text
    shown = response.json()["hyperparameters"]
    assert (shown["beta"], shown["loss"], shown["label_smoothing"]) == (0.2, "conservative", 0.1)
    assert shown["reference"] is None and shown["sft_coefficient"] == 0.0


@pytest.mark.parametrize("hyperparameters, param, words", [
    ({"loss": "hinge"}, f"{HYPERPARAMETERS}.loss", "'sigmoid', 'ipo', 'conservative' or 'tdpo'"),
    ({"beta": 0}, f"{HYPERPARAMETERS}.beta", "greater than 0"),
    ({"beta": -1}, f"{HYPERPARAMETERS}.beta", "greater than 0"),
    ({"label_smoothing": 0.5}, f"{HYPERPARAMETERS}.label_smoothing", "less than 0.5"),
    ({"label_smoothing": -0.1}, f"{HYPERPARAMETERS}.label_smoothing", "greater than or equal"),
    ({"loss": "ipo", "label_smoothing": 0.1}, f"{HYPERPARAMETERS}.label_smoothing",
     "not 'ipo'"),
    ({"tdpo_alpha": 0.5}, f"{HYPERPARAMETERS}.tdpo_alpha", "set loss to 'tdpo'"),
    ({"reference": "ft:nobody:has:this"}, f"{HYPERPARAMETERS}.reference",
     "model 'ft:nobody:has:this' does not exist"),
    ({"reward": {"type": "x"}}, f"{HYPERPARAMETERS}.reward", "unknown field"),
])
def test_bad_dpo_jobs_are_400s_that_store_nothing(
    client: httpx.Client, preference: str, database_url: str, hyperparameters: dict,
    param: str, words: str,
) -> None:
    _, before = job_rows(database_url, "")
    error = assert_envelope(create(client, preference, **hyperparameters), 400)
    assert error["param"] == param and words in error["message"], error
    assert job_rows(database_url, "")[1] == before


def test_a_dpo_job_needs_preference_pairs(client: httpx.Client) -> None:
    supervised = upload(client, jsonl(supervised_rows(2))).json()["id"]
    error = assert_envelope(create(client, supervised), 400)
    assert error["param"] == "training_file"
    assert "a dpo job needs one of preference, fine-tune" in error["message"]


def test_a_pair_that_prefers_nothing_is_refused_at_upload_by_line(client: httpx.Client) -> None:
    same = {"prompt": "1+1=", "chosen": "2", "rejected": "2"}
    error = assert_envelope(upload(client, jsonl([PAIRS[0], same]), "preference"), 400)
    assert "line 2" in error["message"] and "chosen and rejected are identical" in \
        error["message"], error
    openai_same = {**PAIRS[1], "non_preferred_output": PAIRS[1]["preferred_output"]}
    error = assert_envelope(upload(client, jsonl([openai_same]), "preference"), 400)
    assert "line 1" in error["message"] and "identical" in error["message"]
