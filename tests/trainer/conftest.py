"""Fixtures the trainer's tests share: a random tiny base model and a reward service for
graders, each once per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
