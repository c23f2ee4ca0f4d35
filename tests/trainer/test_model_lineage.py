"""Model ids stay flat however deep a lineage goes: a job trained from a fine-tuned model
registers `ft:<root base model>:<suffix>:<job>`, its parent shown by `/v1/models/{id}`; a row
registered under the old nested form still resolves, to train from and to read."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from services.db.engine import session_factory, session_scope
from services.registry import register_model
from tests.api.test_files import upload
from tests.conftest import BASE_MODEL_ID, new_project
from tests.data import jsonl, supervised_rows
from tests.trainer.test_worker import wait_status

pytestmark = pytest.mark.slow
NESTED = f"ft:ft:{BASE_MODEL_ID}:a:ftjob-old1:b:ftjob-old2"
"""An id as jobs trained from a fine-tuned model registered it before ids were flat."""


def test_a_model_trained_from_a_fine_tuned_one_names_the_root_base_model(
        api_url: str, admin: httpx.Client, database_url: str, tiny_model_dir: Path,
        worker_factory) -> None:  # type: ignore[no-untyped-def]
    project, key = new_project(admin)
    with session_scope(session_factory(database_url)) as session:
        register_model(session, model_id=f"ft:{BASE_MODEL_ID}:a:ftjob-old1", project_id=project,
                       kind="fine_tuned", path=str(tiny_model_dir), base_model=BASE_MODEL_ID,
                       job_id="ftjob-old1")
        register_model(session, model_id=NESTED, project_id=project, kind="fine_tuned",
                       path=str(tiny_model_dir), base_model=f"ft:{BASE_MODEL_ID}:a:ftjob-old1",
                       job_id="ftjob-old2")
    worker = worker_factory()
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {key}"},
                      timeout=60) as client:
        training = upload(client, jsonl(supervised_rows(16, seed=1))).json()["id"]
        created = client.post("/v1/fine_tuning/jobs", json={
            "model": NESTED, "training_file": training, "suffix": "c", "seed": 0,
            "method": {"type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": 1, "batch_size": 16, "checkpoint_every": 100}}}})
        assert created.status_code == 200, created.text
        job_id = created.json()["id"]
        job = wait_status(client, job_id, {"succeeded", "failed"}, 300, worker)
        assert job["status"] == "succeeded", job
        assert job["fine_tuned_model"] == f"ft:{BASE_MODEL_ID}:c:{job_id}"

        model = client.get(f"/v1/models/{job['fine_tuned_model']}").json()
        assert (model["parent"], model["base_model"]) == (NESTED, BASE_MODEL_ID)
        old = client.get(f"/v1/models/{NESTED}").json()
        assert (old["parent"], old["base_model"]) == (f"ft:{BASE_MODEL_ID}:a:ftjob-old1",
                                                      BASE_MODEL_ID)
        listed = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        assert listed[job["fine_tuned_model"]] == model
        assert listed[BASE_MODEL_ID]["parent"] is None
        assert listed[BASE_MODEL_ID]["base_model"] is None
