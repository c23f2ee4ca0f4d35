"""Who may score with which reward model: a project's key sees its own models (and the
operator's), an alignd service with the admin key acts for the project it names."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from services.db.engine import session_factory, session_scope
from services.db.models import ApiKey, Project
from services.security import generate_key, hash_key
from tests.conftest import reward_service
from tests.reward_service.conftest import RewardWorld

SERVICE_KEY = "reward-auth-service-key"
ITEM = [{"prompt": "1+1=", "response": "2"}]


def _key(database_url: str, project: str, *, create: bool,
         scopes: list[str] | None = None) -> str:
    secret = generate_key()
    with session_scope(session_factory(database_url)) as session:
        if create:
            session.add(Project(id=project, name=project))
            session.flush()
        key = ApiKey(id=f"key-{uuid.uuid4().hex[:8]}", project_id=project, name="t",
                     key_hash=hash_key(secret), prefix=secret[:12])
        if scopes is not None:
            key.scopes = scopes
        session.add(key)
    return secret


@pytest.fixture(scope="module")
def keys(database_url: str, reward_world: RewardWorld) -> dict[str, str]:
    return {"owner": _key(database_url, reward_world.project, create=False),
            "other": _key(database_url, f"proj-other-{uuid.uuid4().hex[:6]}", create=True)}


@pytest.fixture(scope="module")
def guarded_url(database_url: str, reward_world: RewardWorld) -> Iterator[str]:
    with reward_service(database_url, admin_key=SERVICE_KEY) as url:
        yield url


def score(url: str, key: str | None, model: str, **headers: str) -> httpx.Response:
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.post(f"{url}/v1/score", timeout=60, headers=headers, json={
        "items": ITEM, "reward": {"type": "reward_model", "model": model}})


def test_a_key_is_needed(guarded_url: str, reward_world: RewardWorld) -> None:
    response = score(guarded_url, None, reward_world.single)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_api_key"
    assert score(guarded_url, "sk-alignd-wrong", reward_world.single).status_code == 401


def test_a_project_scores_with_its_own_models_only(guarded_url: str, reward_world: RewardWorld,
                                                   keys: dict[str, str]) -> None:
    assert score(guarded_url, keys["owner"], reward_world.single).status_code == 200
    # loaded now: the cached model must still be hidden from the other project
    hidden = score(guarded_url, keys["other"], reward_world.single)
    assert hidden.status_code == 404 and hidden.json()["error"]["param"] == "reward.model"
    ensemble = httpx.post(f"{guarded_url}/v1/score", timeout=60,
                          headers={"Authorization": f"Bearer {keys['other']}"},
                          json={"items": ITEM, "reward": {"type": "ensemble",
                                                          "model": reward_world.ensemble}})
    assert ensemble.status_code == 404


def test_listing_is_per_project(guarded_url: str, reward_world: RewardWorld,
                                keys: dict[str, str]) -> None:
    def listed(key: str) -> set[Any]:
        response = httpx.get(f"{guarded_url}/v1/reward_models", timeout=30,
                             headers={"Authorization": f"Bearer {key}"})
        return {m["id"] for m in response.json()["data"]}

    assert reward_world.single in listed(keys["owner"])
    assert reward_world.single not in listed(keys["other"])


def test_the_service_key_acts_for_the_project_it_names(guarded_url: str,
                                                       reward_world: RewardWorld) -> None:
    project = {"X-Alignd-Project": reward_world.project}
    assert score(guarded_url, SERVICE_KEY, reward_world.single, **project).status_code == 200
    other = {"X-Alignd-Project": "proj-nobody"}
    assert score(guarded_url, SERVICE_KEY, reward_world.single, **other).status_code == 404
    assert score(guarded_url, SERVICE_KEY, reward_world.single).status_code == 200


def test_running_normalisation_statistics_are_per_project(guarded_url: str,
                                                          keys: dict[str, str]) -> None:
    """Project A's scores under a key must not move project B's statistics for that key: B's
    first lone score is its own mean, 0.0 (it came back -2.0 when the key was shared)."""
    key = f"shared-{uuid.uuid4().hex[:6]}"
    spec = {"type": "string_check", "name": "eq", "operation": "eq",
            "input": "{{sample.output_text}}", "reference": "2",
            "normalize": {"type": "running", "key": key}}

    def normalized(api_key: str, responses: list[str]) -> list[float]:
        response = httpx.post(f"{guarded_url}/v1/score", timeout=30,
                              headers={"Authorization": f"Bearer {api_key}"}, json={
                                  "reward": spec,
                                  "items": [{"prompt": "1+1=", "response": r} for r in responses]})
        assert response.status_code == 200, response.text
        return [item["score"] for item in response.json()["data"]]

    for _ in range(3):
        normalized(keys["owner"], ["2", "2", "2", "2", "3"])  # A: mostly right
    assert normalized(keys["other"], ["3"]) == [0.0]
    assert normalized(keys["owner"], ["3"])[0] < -1.0  # A's own statistics are still A's


def test_a_model_taken_out_of_the_registry_stops_scoring(database_url: str,
                                                         reward_world: RewardWorld,
                                                         keys: dict[str, str]) -> None:
    """It kept scoring 60 s and more after its row was deleted; now within the re-check
    interval (0.3 s here, 5 s by default), for models and ensembles alike."""
    import time

    from services.db.models import RegisteredModel
    from services.registry import register_model

    copies = {"reward_model": (f"rm-gone-{uuid.uuid4().hex[:6]}", reward_world.single),
              "reward_ensemble": (f"ens-gone-{uuid.uuid4().hex[:6]}", reward_world.ensemble)}
    with session_scope(session_factory(database_url)) as session:
        for kind, (model_id, original) in copies.items():
            register_model(session, model_id=model_id, project_id=reward_world.project,
                           kind=kind, path=str(reward_world.paths[original]),
                           base_model="base", job_id="t")

    def scored(model_id: str, kind: str) -> int:
        spec_type = "ensemble" if kind == "reward_ensemble" else "reward_model"
        return httpx.post(f"{url}/v1/score", timeout=60,
                          headers={"Authorization": f"Bearer {keys['owner']}"},
                          json={"items": ITEM,
                                "reward": {"type": spec_type, "model": model_id}}).status_code

    with reward_service(database_url, admin_key=SERVICE_KEY,
                        registry_recheck_seconds=0.3) as url:
        for kind, (model_id, _) in copies.items():
            assert scored(model_id, kind) == 200  # loaded and held in memory
        with session_scope(session_factory(database_url)) as session:
            for model_id, _ in copies.values():
                session.delete(session.get(RegisteredModel, model_id))
        time.sleep(0.4)
        for kind, (model_id, _) in copies.items():
            assert scored(model_id, kind) == 404


def test_one_project_s_slow_graders_do_not_starve_another_or_the_service(
        database_url: str, keys: dict[str, str]) -> None:
    """Six concurrent requests whose python graders sleep made another project's string_check,
    /readyz and /v1/reward_models wait 11 s (they shared one thread pool). Now a project's
    burst runs on the graders' own threads, bounded per project, its excess refused (429)."""
    import asyncio

    slow = {"type": "python", "name": "slow",
            "source": "import time\ndef grade(sample, item):\n    time.sleep(1.5)\n    return 1.0"}
    quick = {"type": "string_check", "name": "eq", "operation": "eq",
             "input": "{{sample.output_text}}", "reference": "2"}

    async def scenario(url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            def post(key: str, reward: dict[str, Any]) -> Any:
                return http.post("/v1/score", json={"items": ITEM, "reward": reward},
                                 headers={"Authorization": f"Bearer {key}"})

            burst = [asyncio.create_task(post(keys["other"], slow)) for _ in range(6)]
            for _ in range(600):  # the burst is in: one running, two waiting, three refused
                if sum(t.done() for t in burst) >= 3:
                    break
                await asyncio.sleep(0.05)
            assert (await post(keys["owner"], quick)).status_code == 200
            assert (await http.get("/readyz")).status_code == 200
            listed = await http.get("/v1/reward_models",
                                    headers={"Authorization": f"Bearer {keys['owner']}"})
            assert listed.status_code == 200
            # served while the burst's first grading still sleeps, not behind it
            graded = [t.result().status_code for t in burst if t.done()]
            answers = await asyncio.gather(*burst)
        statuses = sorted(r.status_code for r in answers)
        assert statuses == [200, 200, 200, 429, 429, 429], statuses
        refused = next(r for r in answers if r.status_code == 429)
        assert refused.headers["Retry-After"] == "1"
        assert refused.json()["error"]["code"] == "grader_queue_full"
        assert graded == [429, 429, 429], graded

    with reward_service(database_url, admin_key=SERVICE_KEY, grader_threads=2,
                        grader_threads_per_project=1, grader_queue=2) as url:
        asyncio.run(scenario(url))


def test_scoring_needs_the_score_scope(guarded_url: str, database_url: str,
                                       reward_world: RewardWorld) -> None:
    reader = _key(database_url, reward_world.project, create=False, scopes=["read", "train"])
    refused = score(guarded_url, reader, reward_world.single)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "missing_scope"
    scorer = _key(database_url, reward_world.project, create=False, scopes=["score"])
    assert score(guarded_url, scorer, reward_world.single).status_code == 200


def test_metrics_are_open_only_to_the_allowed_addresses(database_url: str) -> None:
    with reward_service(database_url, admin_key=SERVICE_KEY) as url:  # loopback is allowed
        assert httpx.get(f"{url}/metrics").status_code == 200
    with reward_service(database_url, admin_key=SERVICE_KEY, metrics_networks=[]) as url:
        refused = httpx.get(f"{url}/metrics")
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "metrics_forbidden"
        assert httpx.get(f"{url}/metrics", headers={
            "Authorization": f"Bearer {SERVICE_KEY}"}).status_code == 200
        assert httpx.get(f"{url}/metrics", headers={
            "Authorization": "Bearer sk-alignd-nope"}).status_code == 403
