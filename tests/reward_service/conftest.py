"""Tiny reward models made from the demo base (LlamaForSequenceClassification with a seeded
random head), registered in the session's database, and the reward service on loopback."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from services.db.engine import session_factory, session_scope
from services.db.models import Project
from services.registry import register_model
from tests.conftest import reward_service
from tests.reward_service.models import make_implicit_reward_model, make_reward_model

TEST_MAX_WAIT_MS = 20.0


@dataclass(frozen=True)
class RewardWorld:
    single: str
    """num_labels=1, no metadata."""
    multi: str
    """num_labels=2, objectives helpful/harmless, default equal weights."""
    multi_weighted: str
    """The same folder as `multi` with metadata objective_weights {helpful: 0.8, harmless: 0.2}."""
    members: list[str]
    """Three num_labels=1 models with different seeds."""
    ensemble: str
    """A reward_ensemble whose member-<i> folders hold the same weights as `members`."""
    implicit: str
    """An implicit (log-probability) reward model, reference-free, beta 0.5."""
    implicit_ref: str
    """An implicit reward model with the demo base as its reference, beta 2.0."""
    paths: dict[str, Path]
    project: str
    """The project that owns every model above."""


@pytest.fixture(scope="session")
def reward_world(tiny_model_dir: Path, database_url: str,
                 tmp_path_factory: pytest.TempPathFactory) -> RewardWorld:
    root = tmp_path_factory.mktemp("reward-models")
    tag = uuid.uuid4().hex[:8]
    ids = {name: f"rm-{name}-{tag}" for name in ("single", "multi", "multi_weighted",
                                                  "m0", "m1", "m2", "ensemble", "implicit",
                                                  "implicit_ref")}
    paths = {
        ids["single"]: make_reward_model(tiny_model_dir, root / "single", 1, seed=1),
        ids["multi"]: make_reward_model(tiny_model_dir, root / "multi", 2, seed=2),
    }
    paths[ids["multi_weighted"]] = paths[ids["multi"]]
    for i in range(3):
        paths[ids[f"m{i}"]] = make_reward_model(tiny_model_dir, root / "ens" / f"member-{i}", 1,
                                                seed=10 + i)
    (root / "ens" / "ensemble.json").write_text(json.dumps(
        {"members": [ids[f"m{i}"] for i in range(3)], "objectives": ["reward"]}))
    paths[ids["ensemble"]] = root / "ens"
    paths[ids["implicit"]] = make_implicit_reward_model(tiny_model_dir, root / "implicit", seed=20,
                                                        beta=0.5, reference=False)
    paths[ids["implicit_ref"]] = make_implicit_reward_model(
        tiny_model_dir, root / "implicit-ref", seed=21, beta=2.0, reference=True)
    objectives = ["helpful", "harmless"]
    rows: list[tuple[str, str, dict[str, Any] | None]] = [
        (ids["single"], "reward_model", None),
        (ids["multi"], "reward_model", {"objectives": objectives}),
        (ids["multi_weighted"], "reward_model",
         {"objectives": objectives, "objective_weights": {"helpful": 0.8, "harmless": 0.2}}),
        *[(ids[f"m{i}"], "reward_model", None) for i in range(3)],
        (ids["ensemble"], "reward_ensemble", {"objectives": ["reward"]}),
        (ids["implicit"], "reward_model", {"objectives": ["reward"], "head": "implicit"}),
        (ids["implicit_ref"], "reward_model", {"objectives": ["reward"], "head": "implicit"}),
    ]
    with session_scope(session_factory(database_url)) as session:
        project = Project(id=f"proj-{tag}", name=f"reward-{tag}")
        session.add(project)
        session.flush()
        for model_id, kind, metadata in rows:
            register_model(session, model_id=model_id, project_id=project.id, kind=kind,
                           path=str(paths[model_id]), base_model="tiny-base", job_id=f"job-{tag}",
                           metadata=metadata)
    return RewardWorld(single=ids["single"], multi=ids["multi"],
                       multi_weighted=ids["multi_weighted"],
                       members=[ids[f"m{i}"] for i in range(3)], ensemble=ids["ensemble"],
                       implicit=ids["implicit"], implicit_ref=ids["implicit_ref"],
                       paths=paths, project=f"proj-{tag}")


@pytest.fixture(scope="session")
def reward_url(database_url: str, reward_world: RewardWorld) -> Iterator[str]:
    # Scoring tests call without keys; tests/reward_service/test_reward_auth.py covers them.
    with reward_service(database_url, max_wait_ms=TEST_MAX_WAIT_MS, max_batch_tokens=4096,
                        require_api_key=False) as url:
        yield url
