"""Fixtures the trainer's tests share: a random tiny base model, a reward service for graders
and an inference service (the torch engine) that serves what jobs register, each once per
module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.settings import InferenceSettings
from services.web import ServerThread
from tests.conftest import reward_service as reward_service_at
from trainer.demo_world import save_random_base_model


@pytest.fixture(scope="module")
def base_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_base_model(tmp_path_factory.mktemp("base"), seed=0)


@pytest.fixture(scope="module")
def reward_service(database_url: str) -> Iterator[str]:
    """The real reward service on a loopback port (graders need no registered model)."""
    with reward_service_at(database_url, max_wait_ms=5.0, require_api_key=False) as url:
        yield url


@pytest.fixture(scope="module")
def inference_url(database_url: str) -> Iterator[str]:
    from inference.main import create_app

    settings = InferenceSettings(_env_file=None, environment="test",  # type: ignore[call-arg]
                                 database_url=database_url, engine="torch", torch_threads=1)
    with ServerThread(create_app(settings)) as server:
        yield server.url
