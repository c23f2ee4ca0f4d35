"""/v1/admin/models against the real api and PostgreSQL, on the real-style family checkpoints:
each family declared is listed at once and a job on it validates; a checkpoint alignd could
not load is refused with its reason and leaves no row; custom code is refused; a hub id that
cannot be fetched names itself; and at job creation, messages on GPT-2 (no chat template), a
max_seq_length past its context, and a base model whose folder broke are refused."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.test_files import assert_envelope, upload
from tests.conftest import BASE_MODEL_ID, CHAT_FAMILIES, FAMILIES
from tests.data import jsonl, supervised_rows
from tests.services.test_checkpoints import copy_of, edit_json, found, remove, remove_a_shard

CHAT_ROWS = [{"messages": [{"role": "user", "content": f"{i}+1="},
                           {"role": "assistant", "content": str(i + 1)}]} for i in range(4)]


class Declared:
    """Base models a test declares through the admin API, removed after it (with the jobs of
    the test's project that still need them cancelled first)."""

    def __init__(self, admin: httpx.Client, client: httpx.Client) -> None:
        self.admin, self.client, self.ids = admin, client, []

    def post(self, **body: Any) -> httpx.Response:
        body.setdefault("id", f"base-{uuid.uuid4().hex[:8]}")
        self.ids.append(body["id"])
        return self.admin.post("/v1/admin/models", json=body)

    def folder(self, path: Path) -> str:
        """A declared model of the checkpoint at ``path``: its id."""
        response = self.post(path=str(path))
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def cleanup(self) -> None:
        for job in self.client.get("/v1/fine_tuning/jobs", params={"limit": 1000}).json()["data"]:
            if job["status"] in ("validating_files", "queued"):
                self.client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
        for model_id in self.ids:
            response = self.admin.delete(f"/v1/admin/models/{model_id}")
            assert response.status_code in (200, 404), response.text


@pytest.fixture
def declared(admin: httpx.Client, client: httpx.Client) -> Iterator[Declared]:
    models = Declared(admin, client)
    yield models
    models.cleanup()


def job(client: httpx.Client, model: str, rows: list[dict], purpose: str = "supervised",
        method: dict | None = None) -> httpx.Response:
    training_file = upload(client, jsonl(rows), purpose).json()["id"]
    return client.post("/v1/fine_tuning/jobs", json={
        "model": model, "training_file": training_file,
        "method": method or {"type": "supervised"}})


def listed(admin: httpx.Client) -> set[str]:
    return {m["id"] for m in admin.get("/v1/admin/models").json()["data"]}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_declared_family_is_listed_at_once_and_a_job_on_it_validates(
        declared: Declared, client: httpx.Client, admin: httpx.Client,
        family_models: dict[str, Path], family: str) -> None:
    response = declared.post(path=str(family_models[family]))
    assert response.status_code == 201, response.text
    model = response.json()
    assert (model["kind"], model["owned_by"], model["path"]) == (
        "base", "alignd", str(family_models[family]))
    facts = model["checkpoint"]
    assert facts["chat_template"] is (family in CHAT_FAMILIES)
    assert facts["context_length"] == (256 if family == "gpt2" else 512)
    assert facts["custom_code"] == [] and facts["eos_token_ids"]
    assert model["id"] in {m["id"] for m in client.get("/v1/models").json()["data"]}
    assert model["id"] in listed(admin)

    created = job(client, model["id"], supervised_rows(4))
    assert created.status_code == 200, created.text
    assert created.json()["status"] == "queued"




@pytest.mark.parametrize("family, damage, reason", [
    ("llama3", remove("config.json"), "config.json is missing"),
    ("mistral", remove("model.safetensors"), "no weights: expected model.safetensors"),
    ("gemma", remove("tokenizer.json"), "the tokenizer's vocabulary is missing"),
    ("qwen2", remove_a_shard,
     re.compile(r"model-00002-of-\d{5}\.safetensors, named in the weights' index, is missing")),
    ("gpt2", lambda folder: edit_json(folder / "config.json", lambda c: c.update(
        architectures=["T5ForConditionalGeneration"], model_type="t5")),
     "architecture T5ForConditionalGeneration is not one alignd's engines serve and train"),
])
def test_a_broken_checkpoint_is_refused_with_its_reason_and_leaves_no_row(
        declared: Declared, client: httpx.Client, admin: httpx.Client,
        family_models: dict[str, Path], tmp_path: Path, family: str,
        damage: Callable[[Path], None], reason: str | re.Pattern[str]) -> None:
    folder = copy_of(family_models, tmp_path, family)
    damage(folder)
    response = declared.post(path=str(folder))
    error = assert_envelope(response, 400)
    model_id = declared.ids[-1]
    assert (error["param"], error["code"]) == ("path", "invalid_checkpoint")
    assert error["message"].startswith(f"base model {model_id!r} cannot be declared from "
                                       f"{folder}: ")
    assert found(reason, error["message"]), error["message"]
    assert model_id not in listed(admin)
    assert_envelope(client.get(f"/v1/models/{model_id}"), 404)


def test_custom_code_is_refused_where_the_server_does_not_allow_it(
        declared: Declared, admin: httpx.Client, family_models: dict[str, Path],
        tmp_path: Path) -> None:
    folder = copy_of(family_models, tmp_path, "llama3")
    edit_json(folder / "config.json", lambda c: c.update(
        auto_map={"AutoModelForCausalLM": "modeling_mine.MineForCausalLM"}))
    for trust in (False, True):
        error = assert_envelope(declared.post(path=str(folder), trust_remote_code=trust), 400)
        assert error["code"] == "remote_code_not_allowed"
        assert "modeling_mine.MineForCausalLM" in error["message"]
        assert "ALIGND_ALLOW_REMOTE_CODE is false" in error["message"]
    assert not set(declared.ids) & listed(admin)


def test_a_hub_id_that_cannot_be_fetched_names_it_and_stores_nothing(
        declared: Declared, admin: httpx.Client, artifact_root: Path) -> None:
    hub_id = f"alignd-test/absent-{uuid.uuid4().hex[:8]}"
    before = sorted(p.name for p in artifact_root.glob("*/*"))
    error = assert_envelope(declared.post(hub_id=hub_id), 400)
    assert (error["param"], error["code"]) == ("hub_id", "hub_fetch_failed")
    assert error["message"].startswith(
        f"model {hub_id!r} could not be fetched from the Hugging Face hub: ")
    assert "HF_HUB_OFFLINE is set" in error["message"] or "unreachable" in error["message"]
    assert declared.ids[-1] not in listed(admin)
    assert sorted(p.name for p in artifact_root.glob("*/*")) == before


@pytest.mark.parametrize("body, param", [
    ({"path": "relative/folder"}, "path"),
    ({}, "body"),
    ({"path": "/x", "hub_id": "org/name"}, "body"),
    ({"hub_id": "not a hub id"}, "hub_id"),
])
def test_a_declaration_needs_one_absolute_path_or_hub_id(declared: Declared, body: dict,
                                                         param: str) -> None:
    assert assert_envelope(declared.post(**body), 400)["param"] == param


def test_an_id_already_taken_is_a_conflict(declared: Declared,
                                           family_models: dict[str, Path]) -> None:
    error = assert_envelope(declared.post(id=BASE_MODEL_ID, path=str(family_models["gpt2"])),
                            409)
    assert error["code"] == "model_id_taken"
    declared.ids.remove(BASE_MODEL_ID)  # the session's own base model stays


def test_only_the_admin_key_declares_lists_and_removes(client: httpx.Client,
                                                      family_models: dict[str, Path]) -> None:
    for response in (
            client.post("/v1/admin/models", json={"id": "mine", "path": str(
                family_models["gpt2"])}),
            client.get("/v1/admin/models"),
            client.delete(f"/v1/admin/models/{BASE_MODEL_ID}")):
        assert assert_envelope(response, 401)["code"] == "invalid_admin_key"
    assert "mine" not in {m["id"] for m in client.get("/v1/models").json()["data"]}


def test_chat_rows_on_gpt2_are_refused_naming_the_missing_chat_template(
        declared: Declared, client: httpx.Client, family_models: dict[str, Path]) -> None:
    model_id = declared.folder(family_models["gpt2"])
    error = assert_envelope(job(client, model_id, CHAT_ROWS), 400)
    assert (error["param"], error["code"]) == ("training_file", "no_chat_template")
    assert error["message"].startswith(f"model {model_id!r} has no chat template")
    assert "chat" in error["message"]
    chat_model = declared.folder(family_models["qwen2"])
    assert job(client, chat_model, CHAT_ROWS).status_code == 200


def test_sequences_longer_than_gpt2_s_context_are_refused(
        declared: Declared, client: httpx.Client, family_models: dict[str, Path]) -> None:
    model_id = declared.folder(family_models["gpt2"])
    too_long = {"type": "supervised", "supervised": {"hyperparameters": {"max_seq_length": 512}}}
    error = assert_envelope(job(client, model_id, supervised_rows(4), method=too_long), 400)
    assert (error["param"], error["code"]) == (
        "method.supervised.hyperparameters.max_seq_length", "context_length_exceeded")
    assert f"model {model_id!r}'s context of 256 tokens" in error["message"]
    fits = {"type": "supervised", "supervised": {"hyperparameters": {"max_seq_length": 256}}}
    assert job(client, model_id, supervised_rows(4), method=fits).status_code == 200

    no_room = {"type": "reinforcement", "reinforcement": {
        "algorithm": "grpo", "hyperparameters": {"max_new_tokens": 256},
        "reward": {"type": "string_check", "name": "exact", "operation": "eq",
                   "input": "{{sample.output_text}}", "reference": "{{item.answer}}"}}}
    prompts = [{"prompt": "1+1=", "answer": "2"}]
    error = assert_envelope(job(client, model_id, prompts, "prompts", no_room), 400)
    assert error["param"] == "method.reinforcement.hyperparameters.max_new_tokens"


def test_a_base_model_whose_folder_broke_is_refused_at_job_creation(
        declared: Declared, client: httpx.Client, family_models: dict[str, Path],
        tmp_path: Path) -> None:
    folder = copy_of(family_models, tmp_path, "mistral")
    model_id = declared.folder(folder)
    (folder / "model.safetensors").unlink()
    error = assert_envelope(job(client, model_id, supervised_rows(4)), 400)
    assert (error["param"], error["code"]) == ("model", "invalid_checkpoint")
    assert error["message"].startswith(f"base model {model_id!r} can no longer be loaded")
    assert "no weights" in error["message"]


def test_a_base_model_in_use_is_kept_and_removed_once_free(
        declared: Declared, client: httpx.Client, admin: httpx.Client,
        family_models: dict[str, Path], tmp_path: Path) -> None:
    folder = copy_of(family_models, tmp_path, "llama3")
    model_id = declared.folder(folder)
    job_id = job(client, model_id, supervised_rows(4)).json()["id"]
    error = assert_envelope(admin.delete(f"/v1/admin/models/{model_id}"), 409)
    assert error["code"] == "model_in_use" and job_id in error["message"]
    client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    assert admin.delete(f"/v1/admin/models/{model_id}").json() == {
        "id": model_id, "object": "model", "deleted": True}
    assert model_id not in {m["id"] for m in client.get("/v1/models").json()["data"]}
    assert (folder / "config.json").is_file()  # the operator's folder is left where it is
    assert_envelope(admin.delete(f"/v1/admin/models/{model_id}"), 404)
