"""GET /v1/models/{id}/content against the real api and PostgreSQL, on models registered as a
job registers them (the jobs themselves: tests/trainer/test_model_download.py): the archive
holds the model's files and none of the training state, another project's model does not
exist, and a merged download asks for one merge however many requests race for it."""

from __future__ import annotations

import io
import tarfile
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from api.model_content import ExportFailed, ModelContent, PendingExport
from services.db.engine import session_factory, session_scope
from services.db.models import RegisteredModel
from services.model_exports import STATE_KEY, ExportStatus, export_state, set_export_state
from services.registry import declare_base_models
from tests.api.test_files import assert_envelope
from tests.api.test_models import Project, registered
from tests.conftest import BASE_MODEL_ID


def members(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        assert all(info.isfile() for info in archive.getmembers())
        return archive.getnames()


def test_a_model_s_folder_comes_as_a_tar_without_its_training_state(
        owner: Project, stranger: Project, database_url: str, artifact_root: Path) -> None:
    model_id, folder = registered(database_url, artifact_root, owner)
    (folder / "config.json").write_text("{}")
    for state in ("optimizer.pt", "scheduler.pt", "rng_state.pt", "trainer_state.json"):
        (folder / state).write_bytes(b"state")
    response = owner.http.get(f"/v1/models/{model_id}/content")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-tar"
    assert response.headers["content-length"] == str(len(response.content))
    job = model_id.rsplit(":", 1)[1]
    assert response.headers["content-disposition"] == \
        f'attachment; filename="ft_{BASE_MODEL_ID}_t_{job}.tar"'
    assert members(response.content) == ["config.json", "model.safetensors"]

    assert_envelope(stranger.http.get(f"/v1/models/{model_id}/content"), 404)
    assert_envelope(stranger.http.get(f"/v1/models/{model_id}/content",
                                      params={"merged": "true"}), 404)
    error = assert_envelope(owner.http.get("/v1/models/ft:nothing:here/content"), 404)
    assert error["code"] == "model_not_found"


def test_merged_is_for_adapters_only(owner: Project, database_url: str,
                                     artifact_root: Path) -> None:
    model_id, _ = registered(database_url, artifact_root, owner)
    error = assert_envelope(owner.http.get(f"/v1/models/{model_id}/content",
                                           params={"merged": "true"}), 400)
    assert error["param"] == "merged" and error["code"] == "not_an_adapter"
    assert "lora_adapter" in error["message"] and "fine_tuned" in error["message"]
    base = assert_envelope(owner.http.get(f"/v1/models/{BASE_MODEL_ID}/content",
                                          params={"merged": "true"}), 400)
    assert "is a base model" in base["message"]


def test_a_declared_base_model_downloads_and_loads(owner: Project, tmp_path: Path) -> None:
    """Base models are visible to every project, so every project may download them."""
    response = owner.http.get(f"/v1/models/{BASE_MODEL_ID}/content")
    assert response.status_code == 200, response.text
    assert {"config.json", "model.safetensors", "generation_config.json",
            "tokenizer.json"} <= set(members(response.content))
    with tarfile.open(fileobj=io.BytesIO(response.content)) as archive:
        archive.extractall(tmp_path, filter="data")
    assert AutoModelForCausalLM.from_pretrained(tmp_path).num_parameters() > 0
    assert AutoTokenizer.from_pretrained(tmp_path).chat_template


def test_a_base_model_that_is_no_folder_here_says_so(owner: Project, database_url: str) -> None:
    model_id = f"hub-only-{uuid.uuid4().hex[:8]}"
    with session_scope(session_factory(database_url)) as session:
        declare_base_models(session, {model_id: "some-org/some-model"})
    try:
        error = assert_envelope(owner.http.get(f"/v1/models/{model_id}/content"), 409)
        assert error["code"] == "model_not_local" and "some-org/some-model" in error["message"]
    finally:  # a base model is every project's: leave none behind for other tests' lists
        with session_scope(session_factory(database_url)) as session:
            session.delete(session.get(RegisteredModel, model_id))


# -- the merged export's state, on the service with a counting enqueue (no broker message) -----


def adapter(database_url: str, artifact_root: Path, project: Project) -> str:
    model_id, _ = registered(database_url, artifact_root, project, kind="lora_adapter")
    return model_id


def ask(database_url: str, project: Project, model_id: str,
        sent: list[str]) -> PendingExport | object:
    with session_scope(session_factory(database_url)) as session:
        return ModelContent(session, project.id, sent.append).get(model_id, merged=True)


def state_of(database_url: str, model_id: str) -> dict | None:
    with session_scope(session_factory(database_url)) as session:
        row = session.get(RegisteredModel, model_id)
        assert row is not None
        return export_state(row)


def test_racing_requests_send_one_merge(owner: Project, database_url: str,
                                        artifact_root: Path) -> None:
    model_id = adapter(database_url, artifact_root, owner)
    sent: list[str] = []
    start, answers = threading.Barrier(4), []

    def request() -> None:
        start.wait()
        answers.append(ask(database_url, owner, model_id, sent))

    threads = [threading.Thread(target=request) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sent == [model_id]
    assert [a.status for a in answers] == ["queued"] * 4  # type: ignore[attr-defined]
    assert ask(database_url, owner, model_id, sent).status == "queued"  # type: ignore[attr-defined]
    assert sent == [model_id]


def test_a_failed_merge_is_reported_once_then_tried_again(owner: Project, database_url: str,
                                                          artifact_root: Path) -> None:
    model_id = adapter(database_url, artifact_root, owner)
    with session_scope(session_factory(database_url)) as session:
        row = session.get(RegisteredModel, model_id)
        assert row is not None
        set_export_state(row, ExportStatus.FAILED, "OSError: no space left on device")
    sent: list[str] = []
    with pytest.raises(ExportFailed, match="no space left on device; ask again to retry"):
        ask(database_url, owner, model_id, sent)
    assert sent == [] and state_of(database_url, model_id) is None
    assert ask(database_url, owner, model_id, sent).status == "queued"  # type: ignore[attr-defined]
    assert sent == [model_id]


def test_a_lost_merge_is_sent_again_and_a_written_one_is_served(
        owner: Project, database_url: str, artifact_root: Path) -> None:
    model_id = adapter(database_url, artifact_root, owner)
    long_ago = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    with session_scope(session_factory(database_url)) as session:
        row = session.get(RegisteredModel, model_id)
        assert row is not None
        row.metadata_ = {"kept": 1, STATE_KEY: {"status": "running", "updated_at": long_ago}}
    sent: list[str] = []
    assert ask(database_url, owner, model_id, sent).status == "queued"  # type: ignore[attr-defined]
    assert sent == [model_id]
    with session_scope(session_factory(database_url)) as session:
        row = session.get(RegisteredModel, model_id)
        assert row is not None and row.metadata_ is not None and row.metadata_["kept"] == 1
        merged = Path(row.path) / "merged"
    merged.mkdir()
    (merged / "model.safetensors").write_bytes(b"merged weights")
    response = owner.http.get(f"/v1/models/{model_id}/content", params={"merged": "true"})
    assert response.status_code == 200, response.text
    assert members(response.content) == ["model.safetensors"]
    assert response.headers["content-disposition"].endswith('-merged.tar"')
    plain = owner.http.get(f"/v1/models/{model_id}/content")
    assert members(plain.content) == ["model.safetensors"]  # the adapter's, not merged/
    assert plain.content != response.content
    assert sent == [model_id]
