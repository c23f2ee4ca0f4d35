"""The inference service on loopback over a registered tiny base model, a LoRA adapter and
value models, with two projects' API keys; a reward service for best-of-N."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from services.db.engine import session_factory, session_scope
from services.db.models import ApiKey, Project
from services.registry import declare_base_models, register_model
from services.security import generate_key, hash_key
from services.settings import InferenceSettings
from services.web import ServerThread, free_port
from tests.conftest import TORCH_THREADS, reward_service
from tests.inference.models import make_lora_adapter, make_value_model

SERVICE_KEY = "inference-tests-service-key"
"""The admin key of the reward and inference services started here, set explicitly: the api
fixtures put another one in the environment, which settings would otherwise read."""


@dataclass(frozen=True)
class InferenceWorld:
    base: str
    """A random-weight demo Llama registered as a base model (every project sees it)."""
    base_path: Path
    adapter: str
    adapter_path: Path
    """The adapter's folder (peft save_pretrained)."""
    """A LoRA adapter over `base`, owned by the first project."""
    values: list[str]
    """Two value models tied to `base` (random heads), owned by the first project."""
    value_paths: list[Path]
    foreign_value: str
    """A value model whose tokenizer has one token more than the base's."""
    project: str
    """The first project, which owns the adapter and the value models."""
    key: str
    """The first project's API key."""
    other_key: str
    """A second project's key: it sees the base, not the first project's models."""


def _project_with_key(session, tag: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    project = Project(id=f"proj-{tag}", name=f"inference-{tag}")
    secret = generate_key()
    session.add(project)
    session.flush()
    session.add(ApiKey(id=f"key-{tag}", project_id=project.id, name="test",
                       key_hash=hash_key(secret), prefix=secret[:12]))
    return project.id, secret


@pytest.fixture(scope="session")
def inference_world(tiny_model_dir: Path, database_url: str,
                    tmp_path_factory: pytest.TempPathFactory) -> InferenceWorld:
    root = tmp_path_factory.mktemp("inference-models")
    tag = uuid.uuid4().hex[:8]
    base = f"tiny-gen-{tag}"
    adapter = make_lora_adapter(tiny_model_dir, root / "adapter")
    values = [make_value_model(tiny_model_dir, root / f"value-{i}", seed=20 + i) for i in range(2)]
    foreign = make_value_model(tiny_model_dir, root / "foreign", seed=30, extra_token="§")
    with session_scope(session_factory(database_url)) as session:
        project, key = _project_with_key(session, tag)
        _, other_key = _project_with_key(session, f"{tag}-other")
        declare_base_models(session, {base: str(tiny_model_dir)})
        ids = {"adapter": f"ft:{base}:lora:{tag}", "v0": f"vm:{base}:0:{tag}",
               "v1": f"vm:{base}:1:{tag}", "foreign": f"vm:{base}:foreign:{tag}"}
        register_model(session, model_id=ids["adapter"], project_id=project, kind="lora_adapter",
                       path=str(adapter), base_model=base, job_id=f"job-{tag}")
        for name, path in (("v0", values[0]), ("v1", values[1]), ("foreign", foreign)):
            register_model(session, model_id=ids[name], project_id=project, kind="value_model",
                           path=str(path), base_model=base, job_id=f"job-{tag}")
    return InferenceWorld(base=base, base_path=tiny_model_dir, adapter=ids["adapter"],
                          adapter_path=adapter,
                          values=[ids["v0"], ids["v1"]], value_paths=values,
                          foreign_value=ids["foreign"], project=project, key=key,
                          other_key=other_key)


@pytest.fixture(scope="session")
def grader_reward_url(database_url: str) -> Iterator[str]:
    """A reward service for grader specs (no reward models needed)."""
    with reward_service(database_url, admin_key=SERVICE_KEY) as url:
        yield url


def inference_settings(database_url: str, reward_url: str, **overrides: object) -> InferenceSettings:
    return InferenceSettings(_env_file=None, environment="test",  # type: ignore[call-arg]
                             database_url=database_url, reward_url=reward_url,
                             admin_key=SERVICE_KEY, torch_threads=TORCH_THREADS, **overrides)


ENGINES = {
    "torch": {"engine": "torch"},
    # On CPU vLLM would size its KV cache from all of RAM; a quarter GiB is plenty here.
    "vllm": {"engine": "vllm", "vllm_kv_cache_gib": 0.25, "vllm_max_loaded_models": 1},
}


@pytest.fixture(scope="session", params=sorted(ENGINES))
def inference_server(request: pytest.FixtureRequest, database_url: str, grader_reward_url: str,
                     inference_world: InferenceWorld) -> Iterator[ServerThread]:
    """The service on each engine in turn: every test of the contract runs against both."""
    from inference.main import create_app

    settings = inference_settings(database_url, grader_reward_url, **ENGINES[request.param])
    with ServerThread(create_app(settings)) as server:
        yield server


@pytest.fixture(scope="session")
def inference_url(inference_server: ServerThread) -> str:
    return inference_server.url


@pytest.fixture
def dead_reward_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


T = TypeVar("T")
Run = Callable[[Awaitable[T]], T]
"""The `run` fixture: an awaitable run to completion on the module's event loop."""


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop per test module that drives engines directly: their background work
    lives on it."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def run(loop: asyncio.AbstractEventLoop) -> Run[Any]:
    return loop.run_until_complete
