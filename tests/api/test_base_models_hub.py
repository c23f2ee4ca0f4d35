"""Base models at start-up and from the Hugging Face hub cache, on `alignd serve api` as a real
process with its own database and artifact store, offline (HF_HUB_OFFLINE=1) over a hub cache
laid out as huggingface_hub writes one (blobs, snapshot links, refs/main) holding real-style
checkpoints: ALIGND_BASE_MODELS declares the good models and logs the refused one; a hub id in
the cache resolves offline, into the artifact store, once; one that is not there is refused
naming it; and nothing of a refused model is left behind."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from services.db.migrate import upgrade
from services.web import free_port
from tests.api.test_files import assert_envelope, upload
from tests.conftest import ADMIN_KEY, new_database, new_project
from tests.data import jsonl, supervised_rows

REVISION = "0123456789abcdef0123456789abcdef01234567"


def cache_repo(hub: Path, hub_id: str, checkpoint: Path, drop: tuple[str, ...] = (),
               config: dict | None = None) -> None:
    """``checkpoint``'s files as huggingface_hub caches a download of ``hub_id``: content in
    blobs/<sha256>, the snapshot's names linking to them, refs/main naming the revision."""
    repo = hub / ("models--" + hub_id.replace("/", "--"))
    snapshot = repo / "snapshots" / REVISION
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for source in sorted(checkpoint.iterdir()):
        if source.name in drop:
            continue
        data = source.read_bytes()
        if source.name == "config.json" and config:
            data = json.dumps({**json.loads(data), **config}).encode()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / source.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)


@dataclass
class HubApi:
    url: str
    admin: httpx.Client
    artifacts: Path
    hub: Path
    log: Path

    def leftovers(self, hub_id: str) -> list[Path]:
        """Anything of a refused hub model in the store: its folder, or a staging copy."""
        return [*(self.artifacts / "base_models").glob("models--" + hub_id.replace("/", "--")),
                *(self.artifacts / "tmp").glob("hub-*")]


@pytest.fixture(scope="module")
def hub_api(service_env: dict[str, str], family_models: dict[str, Path],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubApi]:
    root = tmp_path_factory.mktemp("hub-api")
    hub, artifacts = root / "hub", root / "artifacts"
    cache_repo(hub, "acme/tiny-gpt2", family_models["gpt2"])
    cache_repo(hub, "acme/no-weights", family_models["llama3"], drop=("model.safetensors",))
    cache_repo(hub, "acme/custom", family_models["llama3"], config={
        "auto_map": {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}})
    broken = Path(shutil.copytree(family_models["llama3"], root / "broken"))
    (broken / "config.json").unlink()
    port = free_port()
    with new_database("alignd_hub") as database_url:
        upgrade(database_url)
        env = {**os.environ, **service_env, "ALIGND_DATABASE_URL": database_url,
               "ALIGND_ARTIFACT_ROOT": str(artifacts), "ALIGND_DATA_DIR": str(root / "data"),
               "ALIGND_HOST": "127.0.0.1", "ALIGND_PORT": str(port),
               "ALIGND_ALLOW_REMOTE_CODE": "true", "HF_HUB_CACHE": str(hub),
               "HF_HUB_OFFLINE": "1",
               "ALIGND_BASE_MODELS": json.dumps({"from-cache": "acme/tiny-gpt2",
                                                 "broken": str(broken),
                                                 "qwen2": str(family_models["qwen2"])})}
        log = root / "api.log"
        with log.open("wb") as out:
            process = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "api"],
                                       env=env, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(url, process, log)
            with httpx.Client(base_url=url, timeout=60,
                              headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as admin:
                yield HubApi(url, admin, artifacts, hub, log)
        finally:
            process.terminate()
            process.wait(timeout=30)


def wait_until_up(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"the api did not start:\n{log.read_text()}")


def base_models(api: HubApi) -> dict[str, dict]:
    return {m["id"]: m for m in api.admin.get("/v1/admin/models").json()["data"]}


def test_start_up_declares_the_good_models_and_logs_the_refused_one(hub_api: HubApi) -> None:
    declared = base_models(hub_api)
    assert set(declared) == {"from-cache", "qwen2"}
    fetched = declared["from-cache"]
    folder = hub_api.artifacts / "base_models" / "models--acme--tiny-gpt2"
    assert (fetched["hub_id"], fetched["path"]) == ("acme/tiny-gpt2", str(folder))
    assert fetched["checkpoint"]["architectures"] == ["GPT2LMHeadModel"]
    assert (folder / "model.safetensors").is_file()
    assert not any(path.is_symlink() for path in folder.iterdir())  # files of the store's own
    log = hub_api.log.read_text()
    assert "ALIGND_BASE_MODELS: base model 'broken'" in log and "config.json is missing" in log


def test_a_hub_id_in_the_cache_resolves_offline_once_and_takes_jobs(hub_api: HubApi) -> None:
    response = hub_api.admin.post("/v1/admin/models",
                                  json={"id": "tiny-gpt2", "hub_id": "acme/tiny-gpt2"})
    assert response.status_code == 201, response.text
    folder = hub_api.artifacts / "base_models" / "models--acme--tiny-gpt2"
    assert response.json()["path"] == str(folder)  # the copy start-up made, not a second one

    _, key = new_project(hub_api.admin)
    with httpx.Client(base_url=hub_api.url, timeout=60,
                      headers={"Authorization": f"Bearer {key}"}) as client:
        assert "tiny-gpt2" in {m["id"] for m in client.get("/v1/models").json()["data"]}
        training_file = upload(client, jsonl(supervised_rows(4))).json()["id"]
        job = client.post("/v1/fine_tuning/jobs", json={
            "model": "tiny-gpt2", "training_file": training_file,
            "method": {"type": "supervised"}})
        assert job.status_code == 200, job.text
        client.post(f"/v1/fine_tuning/jobs/{job.json()['id']}/cancel")

    assert hub_api.admin.delete("/v1/admin/models/tiny-gpt2").status_code == 200
    assert folder.is_dir()  # from-cache still loads from it
    assert hub_api.admin.delete("/v1/admin/models/from-cache").status_code == 200
    assert not folder.exists()


def test_offline_a_hub_id_not_in_the_cache_is_refused_naming_it(hub_api: HubApi) -> None:
    error = assert_envelope(hub_api.admin.post("/v1/admin/models", json={
        "id": "absent", "hub_id": "acme/absent"}), 400)
    assert (error["param"], error["code"]) == ("hub_id", "hub_fetch_failed")
    assert error["message"].startswith(
        "model 'acme/absent' could not be fetched from the Hugging Face hub: HF_HUB_OFFLINE is "
        f"set and the hub cache ({hub_api.hub}) holds no snapshot of it")
    assert "absent" not in base_models(hub_api) and not hub_api.leftovers("acme/absent")


@pytest.mark.parametrize("hub_id", ["acme/tiny--gpt2", "acme/tiny..gpt2", "acme/tiny-",
                                    "acme/" + "x" * 92])
def test_a_hub_id_the_hub_would_refuse_is_a_400_before_any_fetch(hub_api: HubApi,
                                                                 hub_id: str) -> None:
    """Each breaks one of the hub's own rules (huggingface_hub raised on these, a 500)."""
    error = assert_envelope(hub_api.admin.post("/v1/admin/models", json={
        "id": "refused", "hub_id": hub_id}), 400)
    assert error["param"] == "hub_id"
    assert "refused" not in base_models(hub_api)


def test_a_cached_checkpoint_that_cannot_load_leaves_nothing(hub_api: HubApi) -> None:
    error = assert_envelope(hub_api.admin.post("/v1/admin/models", json={
        "id": "no-weights", "hub_id": "acme/no-weights"}), 400)
    assert (error["param"], error["code"]) == ("hub_id", "invalid_checkpoint")
    assert "base model 'no-weights' cannot be declared from acme/no-weights: no weights" \
        in error["message"]
    assert "no-weights" not in base_models(hub_api) and not hub_api.leftovers("acme/no-weights")


def test_allowed_custom_code_still_needs_the_request_to_trust_it(hub_api: HubApi) -> None:
    body = {"id": "custom", "hub_id": "acme/custom"}
    error = assert_envelope(hub_api.admin.post("/v1/admin/models", json=body), 400)
    assert (error["param"], error["code"]) == ("trust_remote_code", "remote_code_not_trusted")
    assert "modeling_custom.CustomForCausalLM" in error["message"]
    assert not hub_api.leftovers("acme/custom")
    trusted = hub_api.admin.post("/v1/admin/models", json={**body, "trust_remote_code": True})
    assert trusted.status_code == 201, trusted.text
    assert trusted.json()["trust_remote_code"] is True
    assert trusted.json()["checkpoint"]["custom_code"] == [
        "AutoModelForCausalLM: modeling_custom.CustomForCausalLM"]
