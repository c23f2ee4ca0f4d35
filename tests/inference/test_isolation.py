"""Another project's models do not exist for a caller anywhere a request can name one: the
model, a value model steering it (VAS), or the reward model that ranks best-of-N samples."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from services.db.engine import session_factory, session_scope
from services.registry import register_model
from tests.inference.conftest import InferenceWorld
from tests.reward_service.models import make_reward_model


def post(url: str, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {key}"})


def test_value_guidance_naming_another_project_s_value_model_is_a_404(
        inference_url: str, inference_world: InferenceWorld) -> None:
    body = {"model": inference_world.base, "prompt": "1+1=", "max_tokens": 2,
            "value_guidance": [{"model": inference_world.values[0], "beta": 1.0}]}
    assert post(inference_url, inference_world.key, body).status_code == 200  # the owner's
    response = post(inference_url, inference_world.other_key, body)
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert error["param"] == "value_guidance[0].model" and "value_model" not in error["message"]


def test_best_of_n_ranking_with_another_project_s_reward_model_is_a_404(
        inference_url: str, inference_world: InferenceWorld, database_url: str,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """The owner's request ranks its samples with its real reward model (a sequence
    classifier, scored by the reward service); the same request from another project is a
    404 that does not tell the model exists."""
    reward_model = f"rm-private-{uuid.uuid4().hex[:8]}"
    path = make_reward_model(inference_world.base_path,
                             tmp_path_factory.mktemp("private-rm") / "rm", num_labels=1, seed=4)
    with session_scope(session_factory(database_url)) as session:
        register_model(session, model_id=reward_model, project_id=inference_world.project,
                       kind="reward_model", path=str(path),
                       base_model=inference_world.base, job_id="job-private")
    body = {"model": inference_world.base, "prompt": "1+1=", "max_tokens": 2,
            "best_of_n": {"n": 2, "reward": {"type": "reward_model", "model": reward_model}}}
    owned = post(inference_url, inference_world.key, body)
    assert owned.status_code == 200, owned.text
    assert len(owned.json()["choices"]) == 1
    response = post(inference_url, inference_world.other_key, body)
    assert response.status_code == 404, response.text
    assert response.json()["error"]["param"] == "best_of_n.reward.model"


def test_generating_needs_the_generate_scope(inference_url: str, inference_world: InferenceWorld,
                                             database_url: str) -> None:
    from services.db.models import ApiKey
    from services.security import generate_key, hash_key

    secret = generate_key()
    with session_scope(session_factory(database_url)) as session:
        session.add(ApiKey(id=f"key-{uuid.uuid4().hex[:8]}", project_id=inference_world.project,
                           name="scorer", key_hash=hash_key(secret), prefix=secret[:12],
                           scopes=["score"]))
    body = {"model": inference_world.base, "prompt": "1+1=", "max_tokens": 2}
    refused = post(inference_url, secret, body)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "missing_scope"
    assert post(inference_url, inference_world.key, body).status_code == 200
