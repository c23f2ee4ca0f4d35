"""The row shapes of uploaded files, against the real api and PostgreSQL: each shape found and
reported on the file object, files of rows of several kinds refused, OpenAI's reinforcement
fine-tuning file through the official client, and jobs refusing files of shapes their method
does not train on (storing nothing)."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import create_engine, text

from services.datasets import PURPOSE_SHAPES
from tests.api.test_files import assert_envelope, upload
from tests.conftest import BASE_MODEL_ID
from tests.data import jsonl
from tests.services.test_datasets import ROWS

EXACT = {"type": "string_check", "name": "exact", "operation": "eq",
         "input": "{{sample.output_text}}", "reference": "{{item.answer}}"}


def file_of(client: httpx.Client, *shapes: str, purpose: str = "fine-tune") -> str:
    response = upload(client, jsonl([ROWS[shape] for shape in shapes]), purpose)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def test_each_shape_is_found_and_shown_on_the_file(client: httpx.Client) -> None:
    for purpose, shapes in PURPOSE_SHAPES.items():
        for shape in shapes:
            created = upload(client, jsonl([ROWS[shape], ROWS[shape]]), purpose)
            assert created.status_code == 200, (purpose, shape, created.text)
            body = created.json()
            assert body["shapes"] == [shape] and body["line_count"] == 2, (purpose, body)
            assert client.get(f"/v1/files/{body['id']}").json() == body
    mixed = upload(client, jsonl([ROWS["prompt_completion"], ROWS["chat"]]), "supervised")
    assert mixed.json()["shapes"] == ["chat", "prompt_completion"]
    listed = client.get("/v1/files", params={"limit": 1}).json()["data"]
    assert listed[0]["shapes"] == ["chat", "prompt_completion"]


def test_a_file_of_several_kinds_is_refused_with_its_lines(client: httpx.Client) -> None:
    rows = [ROWS["chat"], ROWS["prompt_completion"], ROWS["conversational_preference"],
            ROWS["openai_rft"]]
    error = assert_envelope(upload(client, jsonl(rows), "fine-tune"), 400)
    assert error["param"] == "file" and error["code"] == "invalid_file"
    assert ("line 3: a preference row (conversational_preference), but line 1 is a supervised "
            "row (chat)") in error["message"]
    assert "line 4: a prompts row (openai_rft)" in error["message"]
    assert client.get("/v1/files").json()["data"] == []


@pytest.fixture
def oai(client: httpx.Client, api_url: str) -> openai.OpenAI:
    key = client.headers["Authorization"].removeprefix("Bearer ")
    return openai.OpenAI(base_url=f"{api_url}/v1", api_key=key, max_retries=0)


def test_an_rft_file_goes_up_through_the_openai_client(oai: openai.OpenAI) -> None:
    """OpenAI's reinforcement fine-tuning file (messages ending with the user's turn, tools,
    the grader's fields) under purpose fine-tune, then OpenAI's reinforcement job on it."""
    rows = [ROWS["openai_rft"], {"messages": [{"role": "system", "content": "Add."},
                                              {"role": "user", "content": "2+2="}],
                                 "answer": "4"}]
    uploaded = oai.files.create(file=("rft.jsonl", jsonl(rows)), purpose="fine-tune")
    assert uploaded.purpose == "fine-tune"
    assert (uploaded.model_extra or {})["shapes"] == ["openai_rft"]
    assert (oai.files.retrieve(uploaded.id).model_extra or {})["shapes"] == ["openai_rft"]
    method: Any = {"type": "reinforcement", "reinforcement": {"grader": EXACT}}
    job = oai.fine_tuning.jobs.create(model=BASE_MODEL_ID, training_file=uploaded.id,
                                      suffix="rft", method=method)
    assert job.status == "queued" and job.training_file == uploaded.id


def job_body(method_type: str, training: str, validation: str | None = None) -> dict[str, Any]:
    section: dict[str, Any] = {"hyperparameters": {}}
    if method_type == "reinforcement":
        section["reward"] = EXACT
    if method_type == "value_model":
        section["hyperparameters"]["reward"] = EXACT
    if method_type == "reward_model":
        section["hyperparameters"]["head"] = "implicit"
    return {"model": BASE_MODEL_ID, "training_file": training, "validation_file": validation,
            "method": {"type": method_type, method_type: section}}


PROMPT_SHAPES = "prompt_only, conversational_prompt_only, openai_rft"
SUPERVISED_SHAPES = "chat, prompt_completion, conversational_prompt_completion, text"
PAIR_SHAPES = "preference, conversational_preference, openai_preference"


@pytest.mark.parametrize("method_type, shape, needed", [
    ("reinforcement", "preference", PROMPT_SHAPES),
    ("reinforcement", "chat", PROMPT_SHAPES),
    ("value_model", "conversational_prompt_completion", PROMPT_SHAPES),
    ("supervised", "openai_rft", SUPERVISED_SHAPES),
    ("supervised", "conversational_preference", SUPERVISED_SHAPES),
    ("dpo", "chat", PAIR_SHAPES),
    ("dpo", "openai_rft", PAIR_SHAPES),
    ("reward_model", "text", PAIR_SHAPES),
])
def test_a_job_refuses_a_file_whose_shape_its_method_does_not_train_on(
        client: httpx.Client, method_type: str, shape: str, needed: str) -> None:
    training = file_of(client, shape)
    error = assert_envelope(client.post("/v1/fine_tuning/jobs",
                                        json=job_body(method_type, training)), 400)
    assert error["param"] == "training_file" and error["code"] == "wrong_file_shape"
    assert f"training_file {training} holds rows of shape {shape};" in error["message"]
    assert f"needs rows of one of the shapes {needed}" in error["message"], error
    assert client.get("/v1/fine_tuning/jobs").json()["data"] == []


def test_the_validation_file_s_shape_is_checked_too(client: httpx.Client) -> None:
    training = file_of(client, "conversational_prompt_only", purpose="prompts")
    validation = file_of(client, "chat", "prompt_completion")
    error = assert_envelope(client.post("/v1/fine_tuning/jobs", json=job_body(
        "reinforcement", training, validation)), 400)
    assert error["param"] == "validation_file"
    assert "holds rows of shape chat and prompt_completion" in error["message"]
    assert client.get("/v1/fine_tuning/jobs").json()["data"] == []
    accepted = client.post("/v1/fine_tuning/jobs", json=job_body(
        "reinforcement", training, file_of(client, "openai_rft")))
    assert accepted.status_code == 200, accepted.text


def test_a_file_from_before_shapes_were_kept_is_read_when_a_job_uses_it(
        client: httpx.Client, database_url: str) -> None:
    pairs, demonstrations = file_of(client, "preference"), file_of(client, "chat")
    with create_engine(database_url).begin() as conn:
        conn.execute(text("update files set shapes = null where id in (:a, :b)"),
                     {"a": pairs, "b": demonstrations})
    assert client.get(f"/v1/files/{pairs}").json()["shapes"] is None
    error = assert_envelope(client.post("/v1/fine_tuning/jobs",
                                        json=job_body("reinforcement", pairs)), 400)
    assert "holds rows of shape preference" in error["message"]
    created = client.post("/v1/fine_tuning/jobs", json=job_body("supervised", demonstrations))
    assert created.status_code == 200, created.text
    assert client.get(f"/v1/files/{demonstrations}").json()["shapes"] == ["chat"]
