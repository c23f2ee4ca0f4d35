"""/v1/fine_tuning/jobs on the real api, PostgreSQL and Redis broker (no worker consumes here:
these tests cover validation, persistence, listing and cancellation of queued jobs)."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.api.test_files import assert_envelope, upload
from tests.conftest import BASE_MODEL_ID
from tests.data import jsonl, supervised_rows


@pytest.fixture
def training_file(client: httpx.Client) -> str:
    return upload(client, jsonl(supervised_rows(20))).json()["id"]


def create(client: httpx.Client, training_file: str, /, **overrides: object) -> httpx.Response:
    body = {"model": BASE_MODEL_ID, "training_file": training_file,
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}}}
    body.update(overrides)
    return client.post("/v1/fine_tuning/jobs", json=body)


def job_rows(database_url: str, job_id: str) -> tuple[list[str], int]:
    with create_engine(database_url).connect() as conn:
        statuses = conn.execute(text(
            "select data->>'status' from job_events where job_id = :j and type = 'status' "
            "order by id"), {"j": job_id}).scalars().all()
        jobs = conn.execute(text("select count(*) from jobs")).scalar_one()
    return list(statuses), jobs


def test_create_queues_the_job_and_records_transitions(client: httpx.Client, training_file: str,
                                                       database_url: str) -> None:
    response = create(client, training_file, suffix="demo", seed=7)
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["object"] == "fine_tuning.job" and job["status"] == "queued"
    assert job["seed"] == 7 and job["suffix"] == "demo" and job["model"] == BASE_MODEL_ID
    assert job["hyperparameters"]["n_epochs"] == 1
    assert job["hyperparameters"]["batch_size"] == 8  # defaults are filled and shown
    assert job["total_steps"] is None  # counted by the trainer, once a worker starts it
    statuses, _ = job_rows(database_url, job["id"])
    assert statuses == ["validating_files", "queued"]
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == "queued"


@pytest.mark.parametrize("overrides, param, words", [
    ({"model": "no-such-model"}, "model", "does not exist"),
    ({"training_file": "file-missing"}, "training_file", "does not exist"),
    ({"validation_file": "file-missing"}, "validation_file", "does not exist"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}}},
     "method.supervised.hyperparameters.n_epochs", "greater than or equal to 1"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"learning_rate": 3}}}},
     "method.supervised.hyperparameters.learning_rate", "less than or equal to 1"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epoch": 2}}}},
     "method.supervised.hyperparameters.n_epoch", "unknown field"),
    ({"method": {"type": "telepathy"}}, "method.type", "supervised"),
    ({"suffix": "has spaces"}, "suffix", "pattern"),
    ({"hyperparameters": {"n_epochs": 2}}, "hyperparameters", "method"),
    ({"unknown": 1}, "unknown", "unknown field"),
])
def test_bad_requests_name_the_field_and_store_nothing(client: httpx.Client, training_file: str,
                                                      database_url: str, overrides: dict,
                                                      param: str, words: str) -> None:
    _, before = job_rows(database_url, "")
    error = assert_envelope(create(client, training_file, **overrides), 404
                            if words == "does not exist" else 400)
    assert error["param"] == param, error
    assert words in error["message"], error
    _, after = job_rows(database_url, "")
    assert after == before


def test_training_file_purpose_must_fit_the_method(client: httpx.Client) -> None:
    preference = upload(client, jsonl([{"prompt": "1+1=", "chosen": "2", "rejected": "3"}]),
                        "preference").json()["id"]
    error = assert_envelope(create(client, preference), 400)
    assert error["param"] == "training_file" and "purpose 'preference'" in error["message"]


def test_list_paginates_newest_first(client: httpx.Client, training_file: str) -> None:
    ids = [create(client, training_file).json()["id"] for _ in range(3)]
    first = client.get("/v1/fine_tuning/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in first["data"]] == ids[::-1][:2] and first["has_more"]
    rest = client.get("/v1/fine_tuning/jobs",
                      params={"limit": 2, "after": first["data"][-1]["id"]}).json()
    assert [j["id"] for j in rest["data"]] == [ids[0]] and not rest["has_more"]


def test_cancel_a_queued_job_and_not_twice(client: httpx.Client, training_file: str,
                                           database_url: str) -> None:
    job_id = create(client, training_file).json()["id"]
    cancelled = client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    error = assert_envelope(client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel"), 409)
    assert "cancelled" in error["message"]
    statuses, _ = job_rows(database_url, job_id)
    assert statuses == ["validating_files", "queued", "cancelled"]


def test_events_are_paginated_both_ways(client: httpx.Client, training_file: str) -> None:
    job_id = create(client, training_file).json()["id"]
    client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    newest = client.get(f"/v1/fine_tuning/jobs/{job_id}/events").json()["data"]
    assert [e["data"]["status"] for e in newest] == ["cancelled", "queued", "validating_files"]
    oldest = client.get(f"/v1/fine_tuning/jobs/{job_id}/events",
                        params={"order": "asc", "after": newest[-1]["id"]}).json()["data"]
    assert [e["id"] for e in oldest] == [newest[1]["id"], newest[0]["id"]]
    bad = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"after": "x"})
    assert assert_envelope(bad, 400)["param"] == "after"
    beyond = client.get(f"/v1/fine_tuning/jobs/{job_id}/metrics", params={"after_step": 2**31})
    assert assert_envelope(beyond, 400)["param"] == "after_step"  # a 500 from PostgreSQL before


def test_other_projects_see_nothing(client: httpx.Client, training_file: str, api_url: str,
                                    admin: httpx.Client) -> None:
    from tests.conftest import new_project

    job_id = create(client, training_file).json()["id"]
    _, key = new_project(admin)
    other = httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {key}"})
    for path in ("", "/events", "/checkpoints", "/metrics"):
        assert_envelope(other.get(f"/v1/fine_tuning/jobs/{job_id}{path}"), 404)
    assert_envelope(other.post(f"/v1/fine_tuning/jobs/{job_id}/cancel"), 404)
    assert other.get("/v1/fine_tuning/jobs").json()["data"] == []
    # and its files cannot be used to create a job
    error = assert_envelope(create(other, training_file), 404)
    assert error["param"] == "training_file"


def test_file_in_use_by_an_unfinished_job_cannot_be_deleted(client: httpx.Client,
                                                            training_file: str) -> None:
    job_id = create(client, training_file).json()["id"]
    assert_envelope(client.delete(f"/v1/files/{training_file}"), 409)
    client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    assert client.delete(f"/v1/files/{training_file}").status_code == 200


def test_models_list_shows_declared_base_models(client: httpx.Client) -> None:
    models = client.get("/v1/models").json()["data"]
    # a fresh project sees the operator's base models only (other tests of the session may
    # have declared more), the one the session declared among them
    assert (BASE_MODEL_ID, "base", "alignd") in [(m["id"], m["kind"], m["owned_by"])
                                                for m in models]
    assert {(m["kind"], m["owned_by"]) for m in models} == {("base", "alignd")}
    assert client.get(f"/v1/models/{BASE_MODEL_ID}").json()["id"] == BASE_MODEL_ID
    assert assert_envelope(client.delete(f"/v1/models/{BASE_MODEL_ID}"), 403)["param"] == "model"
    assert_envelope(client.get("/v1/models/ft:nothing:x:y"), 404)
