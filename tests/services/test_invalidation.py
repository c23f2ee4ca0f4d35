"""A revoked key and a deleted model stop working on every replica of the reward and inference
services at once (`services.invalidation`): the replicas here trust a key, and a registry row,
for 300 s, so only the api's notification can explain a refusal within seconds."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from services.db.engine import session_factory, session_scope
from services.registry import register_model
from services.web import ServerThread
from tests.conftest import BASE_MODEL_ID, new_project, reward_service, wait_for
from tests.reward_service.models import make_reward_model

TRUSTED_FOR = {"key_cache_seconds": 300.0}
WITHIN = 3.0
"""The test's bound on the notification's delay (it lands in milliseconds; the rest is slack
for a busy machine). Far below the 300 s the caches would otherwise keep an entry."""


@pytest.fixture(scope="module")
def replicas(database_url: str) -> Iterator[dict[str, list[str]]]:
    """Two reward and two inference services (torch engine), each in its own app."""
    from inference.main import create_app
    from services.settings import InferenceSettings

    with ExitStack() as stack:
        rewards = [stack.enter_context(reward_service(
            database_url, registry_recheck_seconds=300.0, **TRUSTED_FOR)) for _ in range(2)]
        inference = [stack.enter_context(ServerThread(create_app(InferenceSettings(
            _env_file=None, environment="test", database_url=database_url,  # type: ignore[call-arg]
            torch_threads=1, **TRUSTED_FOR)))).url for _ in range(2)]
        yield {"reward": rewards, "inference": inference}


def answers(url: str, path: str, key: str, body: dict | None = None) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    if body is None:
        return httpx.get(f"{url}{path}", headers=headers, timeout=60).status_code
    return httpx.post(f"{url}{path}", headers=headers, json=body, timeout=60).status_code


def test_a_revoked_key_is_refused_by_every_replica_within_seconds(
        replicas: dict[str, list[str]], admin: httpx.Client) -> None:
    project_id, _ = new_project(admin)
    made = admin.post(f"/v1/admin/projects/{project_id}/api_keys", json={"name": "revoked"})
    key_id, key = made.json()["id"], made.json()["key"]
    calls = [(url, "/v1/reward_models") for url in replicas["reward"]] + [
        (url, "/v1/models") for url in replicas["inference"]]
    assert [answers(url, path, key) for url, path in calls] == [200] * 4  # each now trusts it
    revoked = admin.delete(f"/v1/admin/projects/{project_id}/api_keys/{key_id}")
    assert revoked.status_code == 200, revoked.text
    started = time.monotonic()
    wait_for(lambda: all(answers(url, path, key) == 401 for url, path in calls), WITHIN,
             interval=0.05, message="every replica to refuse the revoked key")
    print(f"refused everywhere {time.monotonic() - started:.2f} s after the revocation")


def test_a_deleted_model_is_refused_by_every_replica_within_seconds(
        replicas: dict[str, list[str]], admin: httpx.Client, artifact_root: Path,
        database_url: str, tiny_model_dir: Path) -> None:
    """A reward model and a generation model of the project, in the artifact store as a job
    would leave them, used on both replicas of their service, then deleted through the api."""
    project_id, key = new_project(admin)
    tag = uuid.uuid4().hex[:8]
    folders = artifact_root / "models" / f"invalidation-{tag}"
    reward_path = make_reward_model(tiny_model_dir, folders / "rm", num_labels=1, seed=5)
    generator_path = Path(shutil.copytree(tiny_model_dir, folders / "ft"))
    reward_id, generator_id = f"rm:{tag}", f"ft:{BASE_MODEL_ID}:{tag}"
    with session_scope(session_factory(database_url)) as session:
        register_model(session, model_id=reward_id, project_id=project_id, kind="reward_model",
                       path=str(reward_path), base_model=BASE_MODEL_ID, job_id=f"job-{tag}")
        register_model(session, model_id=generator_id, project_id=project_id,
                       kind="fine_tuned", path=str(generator_path), base_model=BASE_MODEL_ID,
                       job_id=f"job-{tag}")
    score = {"items": [{"prompt": "1+1=", "response": "2"}],
             "reward": {"type": "reward_model", "model": reward_id}}
    complete = {"model": generator_id, "prompt": "1+1=", "max_tokens": 2, "temperature": 0}
    calls = [(url, "/v1/score", score) for url in replicas["reward"]] + [
        (url, "/v1/completions", complete) for url in replicas["inference"]]
    assert [answers(url, path, key, body) for url, path, body in calls] == [200] * 4
    with httpx.Client(base_url=admin.base_url, timeout=30,
                      headers={"Authorization": f"Bearer {key}"}) as owner:
        for model_id in (reward_id, generator_id):
            deleted = owner.delete(f"/v1/models/{model_id}")
            assert deleted.status_code == 200, deleted.text
    started = time.monotonic()
    wait_for(lambda: all(answers(url, path, key, body) == 404 for url, path, body in calls),
             WITHIN, interval=0.05, message="every replica to refuse the deleted models")
    print(f"refused everywhere {time.monotonic() - started:.2f} s after the deletion")
    assert not reward_path.exists() and not generator_path.exists()  # the files went too
