"""The official `openai` client drives alignd's fine-tuning API unchanged."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.api.test_files import upload
from tests.conftest import BASE_MODEL_ID
from tests.data import jsonl, supervised_rows


@pytest.fixture
def oai(client: httpx.Client, api_url: str) -> openai.OpenAI:
    key = client.headers["Authorization"].removeprefix("Bearer ")
    return openai.OpenAI(base_url=f"{api_url}/v1", api_key=key, max_retries=0)


def test_openai_client_creates_lists_retrieves_cancels_and_reads_events(
        oai: openai.OpenAI, client: httpx.Client) -> None:
    uploaded = oai.files.create(file=("train.jsonl", jsonl(supervised_rows(8))),
                                purpose="fine-tune")
    assert uploaded.id.startswith("file-") and uploaded.bytes > 0
    job = oai.fine_tuning.jobs.create(
        model=BASE_MODEL_ID, training_file=uploaded.id, suffix="oai", seed=5,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}})
    assert job.status == "queued" and job.seed == 5 and job.method.type == "supervised"
    assert [j.id for j in oai.fine_tuning.jobs.list(limit=5)] == [job.id]
    assert oai.fine_tuning.jobs.retrieve(job.id).model == BASE_MODEL_ID
    cancelled = oai.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    events = list(oai.fine_tuning.jobs.list_events(job.id, limit=2))
    assert events[0].message == "job cancelled before it started"
    assert len(events) == 3  # the client followed the has_more cursor
    listed = list(oai.models.list())  # the operator's base models (the session's, at least)
    assert BASE_MODEL_ID in [m.id for m in listed]
    assert {m.owned_by for m in listed} == {"alignd"}


def test_openai_client_sees_the_error_envelope(oai: openai.OpenAI, client: httpx.Client) -> None:
    training = upload(client, jsonl(supervised_rows(4))).json()["id"]
    with pytest.raises(openai.BadRequestError) as info:
        oai.fine_tuning.jobs.create(
            model=BASE_MODEL_ID, training_file=training,
            method={"type": "supervised",
                    "supervised": {"hyperparameters": {"batch_size": 0}}})
    assert info.value.param == "method.supervised.hyperparameters.batch_size"
    with pytest.raises(openai.NotFoundError):
        oai.fine_tuning.jobs.retrieve("ftjob-nope")


def test_openai_client_creates_reinforcement_jobs(oai: openai.OpenAI,
                                                  client: httpx.Client) -> None:
    """OpenAI's own shape (a grader, no algorithm) and alignd's algorithms through extra_body,
    as the README shows them."""
    prompts = oai.files.create(file=("p.jsonl", jsonl([{"prompt": "1+1=", "answer": "2"}])),
                               purpose="prompts")  # type: ignore[arg-type]
    exact = {"type": "string_check", "name": "exact", "operation": "eq",
             "input": "{{sample.output_text}}", "reference": "{{item.answer}}"}
    job = oai.fine_tuning.jobs.create(
        model=BASE_MODEL_ID, training_file=prompts.id, suffix="rl",
        method={"type": "reinforcement",  # type: ignore[typeddict-item]
                "reinforcement": {"grader": exact,
                                  "hyperparameters": {"group_size": 8, "max_steps": 40}}})
    section = client.get(f"/v1/fine_tuning/jobs/{job.id}").json()["method"]["reinforcement"]
    assert section["algorithm"] == "grpo" and section["reward"] == exact
    assert section["hyperparameters"]["group_size"] == 8
    rloo = oai.fine_tuning.jobs.create(
        model=BASE_MODEL_ID, training_file=prompts.id, suffix="rloo",
        extra_body={"method": {"type": "reinforcement", "reinforcement": {
            "algorithm": "rloo", "reward": exact, "hyperparameters": {"group_size": 4}}}})
    assert client.get(f"/v1/fine_tuning/jobs/{rloo.id}").json()["method"]["reinforcement"][
        "algorithm"] == "rloo"
