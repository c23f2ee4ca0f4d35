"""Embedded mode end to end: PostgreSQL from pgserver and Celery's filesystem broker in a data
folder, the whole stack started the way `alignd up` starts it, a supervised job over HTTP. The
folder's PostgreSQL runs before the stack starts, so stopping the stack must leave it running."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from cli.stack import embedded_stack
from cli.stack_lock import LOCK_NAME
from services.client import AlignClient
from services.embedded import embedded_database_url, embedded_postgres_pid, stop_embedded_postgres
from services.settings import AlignSettings
from services.web import free_port
from tests.conftest import wait_for
from tests.data import jsonl, supervised_rows

pytestmark = pytest.mark.slow


@pytest.fixture
def stack(data_dir: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch):
    for name in ("DATABASE_URL", "BROKER_URL", "ARTIFACT_ROOT"):
        monkeypatch.delenv(f"ALIGND_{name}", raising=False)
    urls = {f"ALIGND_{name}_URL": f"http://127.0.0.1:{free_port()}"
            for name in ("API", "REWARD", "INFERENCE")}
    env = {**urls, "ALIGND_DATA_DIR": str(data_dir), "ALIGND_ADMIN_KEY": "embedded-admin",
           "ALIGND_TORCH_THREADS": "1",
           "ALIGND_BASE_MODELS": json.dumps({"tiny": str(tiny_model_dir)})}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = AlignSettings()
    assert settings.embedded and settings.broker_url is None
    embedded_database_url(settings.postgres_dir)  # someone else's server: not the stack's to stop
    running = embedded_stack(settings)
    try:
        running.start(timeout=180)
        yield settings, running
    finally:
        running.stop()
        stop_embedded_postgres(settings.postgres_dir)


def test_embedded_stack_runs_a_job(stack) -> None:
    settings, running = stack
    for url in running.urls().values():
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{settings.api_url}/readyz").json()
    assert ready["checks"] == {"database": "ok", "broker": "ok"}

    with AlignClient(settings.api_url, "embedded-admin") as admin:
        project = admin.create_project("embedded")
        key = admin.create_api_key(project["id"])["key"]
    path = settings.data_dir / "train.jsonl"
    path.write_bytes(jsonl(supervised_rows(32)))
    with AlignClient(settings.api_url, key) as client:
        training = client.upload_file(path, "supervised")
        job = client.create_job(model="tiny", training_file=training["id"], suffix="emb",
                                method={"type": "supervised", "supervised": {
                                    "hyperparameters": {"max_steps": 6, "n_epochs": 2, "batch_size": 8}}})
        done = wait_for(lambda: (j := client.get_job(job["id"]))["status"] in
                        ("succeeded", "failed") and j, 240, interval=0.5,
                        message="the embedded job to finish")
        assert done["status"] == "succeeded", done
        assert done["fine_tuned_model"] in {m["id"] for m in client.list_models()}
        assert client.metrics(job["id"], ["train_loss"])[0]["steps"] == [1, 2, 3, 4, 5, 6]
    assert (settings.broker_dir / "queue").is_dir()
    assert (settings.postgres_dir / "PG_VERSION").exists()

    postgres = embedded_postgres_pid(settings.postgres_dir)
    running.stop()
    assert all(part.process and part.process.poll() is not None
               for part in running.supervisor.parts.values())
    assert not (settings.data_dir / LOCK_NAME).exists()
    assert postgres is not None and embedded_postgres_pid(settings.postgres_dir) == postgres
