"""An implicit-head reward_model job end to end (issue 3's acceptance figure): the real api,
PostgreSQL, broker and an `alignd worker` train the demo world's pretrained base on its
preference file, and the model, scored through the real reward service, ranks preference
pairs of the held-out evaluation problems (in no training file, nor in pretraining)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from modeling.heads import HEAD_FILE
from services.db.engine import session_factory, session_scope
from services.db.models import RegisteredModel
from services.registry import BASE
from tests.api.test_files import upload
from tests.conftest import new_project, reward_service
from tests.data import jsonl
from tests.trainer.test_worker import series, service_path, wait_status
from trainer.demo_world.datasets import preference_rows, split_problems

pytestmark = pytest.mark.slow

ACCEPTANCE = 0.90
"""Held-out pairwise accuracy issue 3 asks for (the classifier head reaches 74-78%)."""


@pytest.fixture
def demo_client(api_url: str, admin: httpx.Client, demo_world: Any,
                database_url: str) -> Iterator[tuple[httpx.Client, str]]:
    """A fresh project's client, and the demo world's pretrained base registered as a base
    model of that project only (an operator's base would show in every project's list)."""
    project, key = new_project(admin)
    model_id = f"demo-base-{uuid.uuid4().hex[:8]}"
    with session_scope(session_factory(database_url)) as session:
        session.add(RegisteredModel(id=model_id, project_id=project, kind=BASE,
                                    path=str(demo_world.base_model)))
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {key}"},
                      timeout=60) as client:
        yield client, model_id


@pytest.fixture(scope="module")
def scoring_url(database_url: str) -> Iterator[str]:
    with reward_service(database_url, require_api_key=False) as url:
        yield url


def pairs(split: str, tag: str) -> list[dict[str, Any]]:
    """Preference pairs of the world's (seed 0) `split` problems, rejected answers drawn anew."""
    return preference_rows(split_problems(0)[split], random.Random(f"{tag}:0"))


def pairwise_accuracy(url: str, model_id: str, rows: list[dict[str, Any]]) -> float:
    items = [{"prompt": row["prompt"], "response": row[side]}
             for row in rows for side in ("chosen", "rejected")]
    response = httpx.post(f"{url}/v1/score", timeout=120, json={
        "items": items, "reward": {"type": "reward_model", "model": model_id}})
    assert response.status_code == 200, response.text
    scores = [result["score"] for result in response.json()["data"]]
    return sum(chosen > rejected for chosen, rejected in zip(scores[::2], scores[1::2],
                                                            strict=True)) / len(rows)


def test_an_implicit_reward_model_ranks_held_out_pairs(
    demo_client: tuple[httpx.Client, str], worker_factory: Any, demo_world: Any,
    scoring_url: str, database_url: str
) -> None:
    client, demo_base = demo_client
    worker = worker_factory()
    training = upload(client, demo_world.preference.read_bytes(), "preference").json()["id"]
    validation = upload(client, jsonl(pairs("supervised_validation", "validation")),
                        "preference").json()["id"]
    hyperparameters = {"head": "implicit", "n_epochs": 3, "batch_size": 32,
                       "learning_rate": 3e-4, "max_seq_length": 64, "eval_every": 100,
                       "checkpoint_every": 100}
    response = client.post("/v1/fine_tuning/jobs", json={
        "model": demo_base, "training_file": training, "validation_file": validation,
        "suffix": "implicit", "seed": 0,
        "method": {"type": "reward_model", "reward_model": {"hyperparameters": hyperparameters}}})
    assert response.status_code == 200, response.text
    job = wait_status(client, response.json()["id"], {"succeeded", "failed"}, 600, worker)
    assert job["status"] == "succeeded", job

    steps, _ = series(client, job["id"], "chosen_nll")
    assert steps == list(range(1, 189))  # ceil(2000 pairs * 3 epochs / 32)
    assert series(client, job["id"], "valid_pairwise_accuracy")[0] == [100, 188]
    model_id = job["fine_tuned_model"]
    assert client.get(f"/v1/models/{model_id}").json()["kind"] == "reward_model"
    with create_engine(database_url).connect() as conn:
        metadata = conn.execute(text("select metadata from models where id = :m"),
                                {"m": model_id}).scalar_one()
    assert metadata["head"] == "implicit" and metadata["beta"] == 0.5
    assert metadata["reference"] is None
    assert (Path(service_path(job["id"])) / HEAD_FILE).is_file()

    accuracy = pairwise_accuracy(scoring_url, model_id, pairs("eval_prompts", "held-out"))
    print(f"held-out pairwise accuracy of the implicit head: {accuracy:.1%}")
    assert accuracy >= ACCEPTANCE
