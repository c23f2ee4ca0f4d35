"""docker-compose.yml, checked offline: its structure, and `docker-compose config` (Debian's
docker-compose package, which `make test` installs) on the default and the gpu profile."""

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
SERVERS = {"api": 8000, "reward": 8001, "inference": 8002, "inference-gpu": 8003}
GPU_SERVICES = {"worker-gpu", "inference-gpu"}
ALIGND_LONG_RUNNING = {*SERVERS, "worker", "worker-gpu"}
LONG_RUNNING = {*ALIGND_LONG_RUNNING, "postgres", "redis"}
SETTINGS = {"api": ApiSettings, "reward": RewardSettings, "inference": InferenceSettings,
            "worker": WorkerSettings, "migrate": ApiSettings,
            "worker-gpu": WorkerSettings, "inference-gpu": InferenceSettings}
# What `docker compose up` starts with each profile, and the environment it is started in
# (docker-compose.yml's header: the gpu profile goes with ALIGND_JOB_QUEUE=gpu).
PROFILES = {"default": ([], {}), "gpu": (["--profile", "gpu"], {"ALIGND_JOB_QUEUE": "gpu"})}
STARTED = {"default": LONG_RUNNING - GPU_SERVICES | {"migrate"},
           "gpu": LONG_RUNNING | {"migrate"}}


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    return compose["services"]


def test_stack_has_every_service_and_one_migration(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == LONG_RUNNING | {"migrate"}
    assert {name for name, service in services.items() if "profiles" not in service} \
        == STARTED["default"]
    assert all(services[name]["profiles"] == ["gpu"] for name in GPU_SERVICES)
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
    assert service["command"] == ["serve", name.removesuffix("-gpu")]
    assert service["environment"]["ALIGND_PORT"] == str(port)
    assert service["environment"]["ALIGND_HOST"] == "0.0.0.0"
    assert service["ports"] == [f"{port}:{port}"]
    assert f"http://127.0.0.1:{port}/readyz" in service["healthcheck"]["test"]


def test_images_keep_torch_out_of_the_api_and_cuda_on_the_gpu_services(
        services: dict[str, dict[str, Any]]) -> None:
    for name in ("api", "migrate"):
        assert services[name]["build"]["dockerfile"] == "deploy/api.Dockerfile"
    for name in ("worker", "reward", "inference"):
        assert services[name]["build"]["dockerfile"] == "deploy/worker.Dockerfile"
        assert "args" not in services[name]["build"]
        assert services[name]["image"] == "alignd-worker:latest"
    for name in GPU_SERVICES:
        assert services[name]["build"]["dockerfile"] == "deploy/worker.Dockerfile"
        assert services[name]["build"]["args"] == {"VLLM": "gpu"}
        assert services[name]["image"] == "alignd-worker:cuda"


def _docker_compose_config(admin_key: str | None, profile: str = "default"
                           ) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:  # a failure, never a skip: `make test` installs it
        pytest.fail("docker-compose is not installed: run deploy/local/ensure-deploy-tools.sh "
                    "as root, or apt-get install docker-compose")
    flags, profile_env = PROFILES[profile]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALIGND_")}
    env.update(profile_env)
    if admin_key is not None:
        env["ALIGND_ADMIN_KEY"] = admin_key
    command = [binary, "-f", str(COMPOSE_FILE), *flags, "config"]
    return subprocess.run(command, cwd=REPO, env=env, check=False, capture_output=True, text=True,
                          timeout=60)


@pytest.fixture(scope="module", params=sorted(PROFILES))
def profile(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def rendered(profile: str) -> dict[str, dict[str, Any]]:
    """The services `docker compose up` starts with the profile, as docker-compose resolves
    them (docker-compose 1.x prints the other profiles' services too; 2.x leaves them out)."""
    result = _docker_compose_config("a-secret-of-our-own", profile)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    return {name: service for name, service in services.items()
            if set(service.get("profiles", [])) <= {profile}}


def test_docker_compose_starts_each_profiles_services(profile: str,
                                                      rendered: dict[str, dict[str, Any]]) -> None:
    assert set(rendered) == STARTED[profile]


def test_gpu_services_reserve_one_nvidia_gpu(rendered: dict[str, dict[str, Any]]) -> None:
    for name, service in rendered.items():
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get(
            "devices")
        if name in GPU_SERVICES:
            assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
        else:
            assert devices is None, name


def test_environment_is_accepted_by_production_settings(profile: str,
                                                        rendered: dict[str, dict[str, Any]],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in sorted(set(rendered) & set(SETTINGS)):
        for key in [k for k in os.environ if k.startswith("ALIGND_")]:
            monkeypatch.delenv(key)
        for key, value in rendered[name]["environment"].items():
            monkeypatch.setenv(key, value)

        settings = SETTINGS[name](_env_file=None)

        assert settings.environment == "production"
        assert settings.admin_key.get_secret_value() == "a-secret-of-our-own"
        assert settings.database_url == "postgresql+psycopg://alignd:alignd@postgres:5432/alignd"
        assert settings.broker_url == "redis://redis:6379/0"
        queue = "gpu" if profile == "gpu" else "cpu"
        if name == "api":
            assert isinstance(settings, ApiSettings) and settings.job_queue == queue
        if isinstance(settings, WorkerSettings):
            assert settings.queues == (["gpu"] if name.endswith("-gpu") else ["cpu"]), name
        if isinstance(settings, InferenceSettings):
            assert settings.engine == ("vllm" if name.endswith("-gpu") else "torch"), name


def test_docker_compose_refuses_to_start_without_an_admin_key() -> None:
    result = _docker_compose_config(None)
    assert result.returncode != 0
    assert "ALIGND_ADMIN_KEY must be set" in result.stderr
