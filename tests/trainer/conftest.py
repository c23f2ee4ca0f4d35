"""Fixtures the trainer's tests share: a random tiny base model, a reward service for graders
and an inference service (the torch engine) that serves what jobs register, each once per
module."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services.settings import InferenceSettings, RewardSettings
from services.web import ServerThread, free_port
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


@dataclass
class LateRewardService:
    """A reward service that nothing serves for `delay` seconds, then answers on its port for
    a minute: a restart, as a job's scorer sees it."""

    database_url: str
    delay: float = 1.5
    port: int = field(default_factory=free_port)
    started: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_later(self) -> LateRewardService:
        from reward_service.main import create_app

        settings = RewardSettings(_env_file=None, environment="test",  # type: ignore[call-arg]
                                  database_url=self.database_url, require_api_key=False)

        def serve() -> None:
            time.sleep(self.delay)
            with ServerThread(create_app(settings), port=self.port):
                self.started.set()
                time.sleep(60)

        threading.Thread(target=serve, daemon=True).start()
        return self
