"""docker-compose.yml, checked offline: its structure always, and `docker-compose config` when
that binary is installed (Debian's docker-compose package)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.settings import ApiSettings, InferenceSettings, RewardSettings, WorkerSettings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
SERVERS = {"api": 8000, "reward": 8001, "inference": 8002}
ALIGND_LONG_RUNNING = {*SERVERS, "worker"}
LONG_RUNNING = {*ALIGND_LONG_RUNNING, "postgres", "redis"}
SETTINGS = {"api": ApiSettings, "reward": RewardSettings, "inference": InferenceSettings,
            "worker": WorkerSettings, "migrate": ApiSettings}


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    return compose["services"]


def test_stack_has_every_service_and_one_migration(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == LONG_RUNNING | {"migrate"}
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", sorted(LONG_RUNNING))
def test_long_running_services_have_a_healthcheck(services: dict[str, dict[str, Any]],
                                                  name: str) -> None:
    healthcheck = services[name]["healthcheck"]
    assert healthcheck["test"][0] in ("CMD", "CMD-SHELL")
    assert services[name]["restart"] == "unless-stopped"


@pytest.mark.parametrize("name", sorted(ALIGND_LONG_RUNNING))
def test_alignd_services_start_after_the_migration(services: dict[str, dict[str, Any]],
                                                   name: str) -> None:
    depends_on = services[name]["depends_on"]
    assert depends_on["migrate"]["condition"] == "service_completed_successfully"
    assert depends_on["redis"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", sorted(ALIGND_LONG_RUNNING))
def test_artifacts_volume_is_mounted_at_the_artifact_root(services: dict[str, dict[str, Any]],
                                                          name: str) -> None:
    root = services[name]["environment"]["ALIGND_ARTIFACT_ROOT"]
    assert f"artifacts:{root}" in services[name]["volumes"]


@pytest.mark.parametrize("name", sorted(SERVERS))
def test_servers_bind_publish_and_probe_one_port(services: dict[str, dict[str, Any]],
                                                 name: str) -> None:
    service, port = services[name], SERVERS[name]
    assert service["command"] == ["serve", name]
    assert service["environment"]["ALIGND_PORT"] == str(port)
    assert service["environment"]["ALIGND_HOST"] == "0.0.0.0"
    assert service["ports"] == [f"{port}:{port}"]
    assert f"http://127.0.0.1:{port}/readyz" in service["healthcheck"]["test"]


def test_images_keep_torch_out_of_the_api(services: dict[str, dict[str, Any]]) -> None:
    for name in ("api", "migrate"):
        assert services[name]["build"]["dockerfile"] == "deploy/api.Dockerfile"
    for name in ("worker", "reward", "inference"):
        assert services[name]["build"]["dockerfile"] == "deploy/worker.Dockerfile"


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_environment_is_accepted_by_production_settings(services: dict[str, dict[str, Any]],
                                                        name: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    environment = services[name]["environment"]
    assert environment["ALIGND_ADMIN_KEY"].startswith("${ALIGND_ADMIN_KEY:?")
    for key in [k for k in os.environ if k.startswith("ALIGND_")]:
        monkeypatch.delenv(key)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("ALIGND_ADMIN_KEY", "a-secret-of-our-own")

    settings = SETTINGS[name](_env_file=None)

    assert settings.environment == "production"
    assert settings.database_url == "postgresql+psycopg://alignd:alignd@postgres:5432/alignd"
    assert settings.broker_url == "redis://redis:6379/0"
    if isinstance(settings, WorkerSettings):
        assert settings.queues == ["cpu"]


def _docker_compose_config(admin_key: str | None) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    env = {k: v for k, v in os.environ.items() if k != "ALIGND_ADMIN_KEY"}
    if admin_key is not None:
        env["ALIGND_ADMIN_KEY"] = admin_key
    command = [binary, "-f", str(COMPOSE_FILE), "config", "-q"]
    return subprocess.run(command, cwd=REPO, env=env, check=False, capture_output=True, text=True,
                          timeout=60)


def test_docker_compose_accepts_the_file() -> None:
    result = _docker_compose_config("a-secret-of-our-own")
    assert result.returncode == 0, result.stderr


def test_docker_compose_refuses_to_start_without_an_admin_key() -> None:
    result = _docker_compose_config(None)
    assert result.returncode != 0
    assert "ALIGND_ADMIN_KEY must be set" in result.stderr
