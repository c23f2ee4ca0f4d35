"""Fixtures on real parts: a fresh PostgreSQL database per test session (migrated with the
project's Alembic scripts), a real Redis broker, the api on a loopback port, worker processes.
Which PostgreSQL and Redis: `tests.local_services` (started for the session where none answers)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from services.db.migrate import upgrade
from services.settings import ApiSettings
from services.web import ServerThread
from tests import local_services
from tests.local_services import postgres_url, redis_url

ADMIN_KEY = "test-admin-key"
BASE_MODEL_ID = "tiny-base"
STARTED = pytest.StashKey[local_services.SessionServers | None]()


WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
TORCH_THREADS = max(1, (os.cpu_count() or 1) // WORKERS)
"""torch threads for each pytest process and the services it runs in process: under `make
test` the processes share the cores (two processes of two threads each on two cores
oversubscribed them)."""


def pytest_configure(config: pytest.Config) -> None:
    if WORKERS > 1:
        import torch

        torch.set_num_threads(TORCH_THREADS)
    try:
        config.stash[STARTED] = local_services.prepare()
    except local_services.NotAnswering as exc:
        raise pytest.UsageError(str(exc)) from None


LONGEST_FIRST = ("tests/trainer/test_families_learn.py", "tests/e2e/test_demo.py",
                 "tests/inference/test_serving_families.py")
"""Test files that take minutes, collected first: a parallel run (`make test`: each process
takes a whole file at a time, in collection order) starts them at once instead of leaving
one process to finish them alone while the other has nothing left."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {path: place for place, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


def pytest_unconfigure(config: pytest.Config) -> None:
    started = config.stash.get(STARTED, None)
    if started is not None:
        started.stop()


def pytest_report_header(config: pytest.Config) -> str | None:
    started = config.stash.get(STARTED, None)
    return None if started is None else "started for this session: " + "; ".join(started.notes)


@contextmanager
def new_database(prefix: str) -> Iterator[str]:
    """A new, empty database of the session's PostgreSQL (its URL), dropped afterwards."""
    from sqlalchemy.engine import make_url

    from services.db.engine import get_engine

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(postgres_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"create database {name}"))
    url = make_url(postgres_url()).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        get_engine(url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f"drop database if exists {name} with (force)"))
        admin.dispose()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with new_database("alignd_test") as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="session")
def broker_url() -> Iterator[str]:
    """A Redis database of this session's own: the first of 1..15 holding no key at all,
    claimed with a key only this session sets (so two sessions never share one, and no one
    else's data is wiped), emptied at the end."""
    import redis

    session, server = uuid.uuid4().hex, redis_url()
    for db in range(1, 16):
        client = redis.Redis.from_url(f"{server}/{db}")
        if client.dbsize() == 0 and client.set(SESSION_CLAIM, session, nx=True):
            if client.dbsize() == 1:  # nothing slipped in before the claim
                break
            client.delete(SESSION_CLAIM)
        client.close()
    else:
        pytest.fail(f"no empty Redis database (1-15) at {server} for this test session")
    yield f"{server}/{db}"
    if client.get(SESSION_CLAIM) == session.encode():
        client.flushdb()
    client.close()


SESSION_CLAIM = "alignd-test-session"
"""The key a test session sets in the Redis database it takes (`broker_url`)."""


@pytest.fixture
def db_session(database_url: str) -> Iterator[Session]:
    """A session inside a transaction that is rolled back after the test; commits inside the
    code under test become savepoints."""
    from services.db.engine import get_engine

    connection = get_engine(database_url).connect()
    transaction = connection.begin()
    session = Session(bind=connection, join_transaction_mode="create_savepoint",
                      expire_on_commit=False)
    yield session
    session.close()
    transaction.rollback()
    connection.close()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trainer.demo_world.model import save_random_base_model

    return save_random_base_model(tmp_path_factory.mktemp("tiny-base"), seed=0)


@pytest.fixture(scope="session")
def unloadable_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A base checkpoint that passes every check made when a job is created (its files are
    all there and readable) but fails to load in the worker: its config asks for MLP matrices
    twice the size of the weights' (a config edited by hand). For tests of failing jobs."""
    import json
    import shutil

    folder = tmp_path_factory.mktemp("unloadable") / "model"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] *= 2
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="session")
def demo_world() -> Any:
    """The full demo world (seed 0, pretrained base), built once and kept where `alignd demo`
    keeps it ($ALIGND_DEMO_DIR, else ~/.cache/alignd/demo): a couple of CPU minutes the first
    time, a manifest check afterwards."""
    from trainer.demo_world import build_demo_world, default_demo_root

    return build_demo_world(default_demo_root())


FAMILIES = ("qwen2", "llama3", "mistral", "gemma", "gpt2")
"""The real-style families (`trainer.real_world`), for tests parametrised over them."""
CHAT_FAMILIES = ("qwen2", "llama3", "mistral", "gemma")
"""The families whose tokenizer has a chat template (GPT-2's has none)."""


@pytest.fixture(scope="session")
def family_models() -> dict[str, Path]:
    """Each real-style family's checkpoint folder, randomly initialised (no pretraining):
    byte-level BPE tokenizer, chat template, stop tokens and weights as a user's folder holds
    them. Built in seconds and cached beside the pretrained ones."""
    from trainer.real_world import build_family_world, default_real_root

    root = default_real_root() / "untrained"
    return {name: build_family_world(root, name, pretrain_steps=0).base_model
            for name in FAMILIES}


@pytest.fixture(scope="session")
def family_world() -> Any:
    """``family_world(name)``: that family's world (`DemoWorld` layout), its checkpoint
    pretrained briefly on the demo task; cached in $ALIGND_REAL_DIR (~/.cache/alignd/real)."""
    from trainer.real_world import build_family_world, default_real_root

    return lambda name: build_family_world(default_real_root(), name)


@pytest.fixture(scope="session")
def artifact_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def session_reward_url(database_url: str) -> Iterator[str]:
    """The reward service the session's api checks reward specs with (and workers score with,
    unless a test gives them another)."""
    with reward_service(database_url, admin_key=ADMIN_KEY, max_wait_ms=5.0) as url:
        yield url


@pytest.fixture(scope="session")
def service_env(database_url: str, broker_url: str, artifact_root: Path, session_reward_url: str,
                tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment every alignd process of the test session runs with."""
    return {
        "ALIGND_REWARD_URL": session_reward_url,
        "ALIGND_ENVIRONMENT": "test",
        "ALIGND_DATABASE_URL": database_url,
        "ALIGND_BROKER_URL": broker_url,
        "ALIGND_ARTIFACT_ROOT": str(artifact_root),
        "ALIGND_DATA_DIR": str(tmp_path_factory.mktemp("data")),
        "ALIGND_ADMIN_KEY": ADMIN_KEY,
        "ALIGND_BASE_MODELS": f'{{"{BASE_MODEL_ID}": "{tiny_model_dir}"}}',
    }


@pytest.fixture(scope="session")
def api_settings(service_env: dict[str, str], monkeypatch_session: pytest.MonkeyPatch) -> ApiSettings:
    for key, value in service_env.items():
        monkeypatch_session.setenv(key, value)
    return ApiSettings(max_upload_bytes=200_000)


@pytest.fixture(scope="session")
def monkeypatch_session() -> Iterator[pytest.MonkeyPatch]:
    patch = pytest.MonkeyPatch()
    yield patch
    patch.undo()


@pytest.fixture(scope="session")
def api_url(api_settings: ApiSettings) -> Iterator[str]:
    from api.main import create_app

    with ServerThread(create_app(api_settings)) as server:
        yield server.url


@pytest.fixture(scope="session")
def admin(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                      timeout=30) as client:
        yield client


def new_project(admin: httpx.Client) -> tuple[str, str]:
    project = admin.post("/v1/admin/projects", json={"name": f"p-{uuid.uuid4().hex[:8]}"})
    assert project.status_code == 201, project.text
    key = admin.post(f"/v1/admin/projects/{project.json()['id']}/api_keys", json={"name": "t"})
    assert key.status_code == 201, key.text
    return project.json()["id"], key.json()["key"]


@pytest.fixture
def client(api_url: str, admin: httpx.Client) -> Iterator[httpx.Client]:
    """An httpx client authenticated as a fresh project of its own."""
    _, key = new_project(admin)
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {key}"},
                      timeout=60) as http:
        yield http
        cancel_queued(http)


def cancel_queued(http: httpx.Client) -> None:
    """Cancel the project's jobs that have not started: a test's leftovers would otherwise
    wait for the next test's worker."""
    for job in http.get("/v1/fine_tuning/jobs", params={"limit": 1000}).json()["data"]:
        if job["status"] in ("validating_files", "queued"):
            http.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")


class WorkerProcess:
    """`alignd worker` as a real child process."""

    def __init__(self, env: dict[str, str], log_path: Path, **settings: str):
        self.env = {**os.environ, **env, **settings}
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen([sys.executable, "-m", "cli.main", "worker"],
                                        env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]


@pytest.fixture
def worker_factory(service_env: dict[str, str], tmp_path: Path) -> Iterator[object]:
    workers: list[WorkerProcess] = []

    def start(**settings: str) -> WorkerProcess:
        worker = WorkerProcess(service_env, tmp_path / f"worker-{len(workers)}.log",
                               **{"ALIGND_TORCH_THREADS": "1", **settings}).start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


def wait_for(predicate, timeout: float, interval: float = 0.25, message: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")


@contextmanager
def reward_service(database_url: str, **settings: Any) -> Iterator[str]:
    """The real reward service on a loopback port (its URL), test defaults plus ``settings``."""
    from reward_service.main import create_app
    from services.settings import RewardSettings

    configured = RewardSettings(_env_file=None, environment="test",  # type: ignore[call-arg]
                                database_url=database_url, **settings)
    with ServerThread(create_app(configured)) as server:
        yield server.url
