"""/v1/models against the real api and PostgreSQL: deleting a model takes its files off the
artifact store, refuses while something still needs them, and another project can neither see,
delete, train from nor overwrite a project's model."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from services.db.engine import session_factory, session_scope
from services.errors import Conflict
from services.registry import register_model
from tests.api.test_files import assert_envelope, upload
from tests.conftest import BASE_MODEL_ID, new_project
from tests.data import jsonl, supervised_rows


class Project:
    def __init__(self, api_url: str, admin: httpx.Client) -> None:
        self.id, key = new_project(admin)
        self.http = httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {key}"},
                                 timeout=60)


def registered(database_url: str, artifact_root: Path, project: Project, kind: str = "fine_tuned",
               base_model: str = BASE_MODEL_ID) -> tuple[str, Path]:
    """A model row of ``project`` as a job registers one, with a folder of files in the store."""
    job_id = f"ftjob-{uuid.uuid4().hex[:12]}"
    folder = artifact_root / "models" / job_id
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    model_id = f"ft:{base_model}:t:{job_id}"
    with session_scope(session_factory(database_url)) as session:
        register_model(session, model_id=model_id, project_id=project.id, kind=kind,
                       path=str(folder), base_model=base_model, job_id=job_id)
    return model_id, folder


def test_deleting_a_model_removes_its_files(owner: Project, stranger: Project,
                                            database_url: str, artifact_root: Path) -> None:
    model_id, folder = registered(database_url, artifact_root, owner)
    assert_envelope(stranger.http.delete(f"/v1/models/{model_id}"), 404)
    assert_envelope(stranger.http.get(f"/v1/models/{model_id}"), 404)
    assert folder.is_dir()  # untouched by the stranger's try
    assert owner.http.delete(f"/v1/models/{model_id}").json() == {
        "id": model_id, "object": "model", "deleted": True}
    assert not folder.exists()
    assert_envelope(owner.http.get(f"/v1/models/{model_id}"), 404)


def test_a_model_something_is_built_on_or_trains_from_is_kept(
        owner: Project, database_url: str, artifact_root: Path) -> None:
    model_id, folder = registered(database_url, artifact_root, owner)
    adapter_id, adapter_folder = registered(database_url, artifact_root, owner,
                                            kind="lora_adapter", base_model=model_id)
    error = assert_envelope(owner.http.delete(f"/v1/models/{model_id}"), 409)
    assert error["code"] == "model_in_use" and adapter_id in error["message"]
    assert owner.http.delete(f"/v1/models/{adapter_id}").status_code == 200
    assert not adapter_folder.exists() and folder.is_dir()

    training_file = upload(owner.http, jsonl(supervised_rows(8))).json()["id"]
    job = owner.http.post("/v1/fine_tuning/jobs", json={
        "model": model_id, "training_file": training_file, "method": {"type": "supervised"}})
    assert job.status_code == 200, job.text
    error = assert_envelope(owner.http.delete(f"/v1/models/{model_id}"), 409)
    assert job.json()["id"] in error["message"] and folder.is_dir()
    owner.http.post(f"/v1/fine_tuning/jobs/{job.json()['id']}/cancel")
    assert owner.http.delete(f"/v1/models/{model_id}").status_code == 200
    assert not folder.exists()


def test_another_project_can_neither_train_from_nor_overwrite_a_model(
        owner: Project, stranger: Project, database_url: str, artifact_root: Path) -> None:
    model_id, folder = registered(database_url, artifact_root, owner)
    training_file = upload(stranger.http, jsonl(supervised_rows(8))).json()["id"]
    job = stranger.http.post("/v1/fine_tuning/jobs", json={
        "model": model_id, "training_file": training_file, "method": {"type": "supervised"}})
    assert assert_envelope(job, 404)["param"] == "model"
    assert stranger.http.get("/v1/fine_tuning/jobs").json()["data"] == []
    with session_scope(session_factory(database_url)) as session, pytest.raises(Conflict):
        register_model(session, model_id=model_id, project_id=stranger.id, kind="fine_tuned",
                       path=str(artifact_root / "elsewhere"), base_model=BASE_MODEL_ID,
                       job_id="ftjob-theirs")
    model = owner.http.get(f"/v1/models/{model_id}").json()
    assert model["owned_by"] == owner.id and folder.is_dir()


def test_another_project_cannot_read_a_file_s_content(owner: Project,
                                                      stranger: Project) -> None:
    file_id = upload(owner.http, jsonl(supervised_rows(4))).json()["id"]
    assert_envelope(stranger.http.get(f"/v1/files/{file_id}/content"), 404)
    assert_envelope(stranger.http.delete(f"/v1/files/{file_id}"), 404)
    assert owner.http.get(f"/v1/files/{file_id}/content").status_code == 200
