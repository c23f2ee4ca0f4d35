"""deploy/k8s, checked offline: each overlay rendered with `kubectl kustomize` and every
document validated against the Kubernetes schemas (kubernetes-validate, strict), then what the
rendered stack promises: limits, non-root read-only containers, autoscalers, disruption
budgets, scrape annotations, GPUs where the gpu overlay puts them, settings the services accept."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from services.auth import address_allowed
from services.settings import ApiSettings, InferenceSettings, RewardSettings, WorkerSettings
from tests.deploy.test_dockerfiles import DOCKERFILES, final_stage

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy/k8s"
OVERLAYS = ("cpu", "gpu")
KUBERNETES_VERSION = "1.30.0"
SERVERS = {"alignd-api": 8000, "alignd-reward": 8001, "alignd-inference": 8002}
WORKLOADS = (*SERVERS, "alignd-worker")
AUTOSCALED = ("alignd-api", "alignd-reward", "alignd-inference")
ON_GPU = ("alignd-worker", "alignd-inference")
ARTIFACT_ROOT = "/var/lib/alignd/artifacts"
SETTINGS = {"alignd-api": ApiSettings, "alignd-reward": RewardSettings,
            "alignd-inference": InferenceSettings, "alignd-worker": WorkerSettings}


def _image_env(image: str) -> dict[str, str]:
    pairs = [word for op, args in final_stage(DOCKERFILES[image]) if op == "ENV"
             for word in args.split()]
    return dict(pair.split("=", 1) for pair in pairs)


def _image_uid(image: str) -> int:
    return int(dict(final_stage(DOCKERFILES[image]))["USER"].split(":")[0])


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def docs(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:  # a failure, never a skip: `make test` installs it
        pytest.fail("kubectl is not installed: run deploy/local/ensure-deploy-tools.sh as root")
    result = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / overlay)],
                            check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def _pod(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = _pod(workload)["containers"]
    assert len(containers) == 1
    return containers[0]


def _pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every pod template: the Deployments' and the migration Job's."""
    return {name: workload for kind in ("Deployment", "Job")
            for name, workload in _by_kind(docs, kind).items()}


def _mounts(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """mount path -> the volume mounted there."""
    volumes = {volume["name"]: volume for volume in _pod(workload).get("volumes", [])}
    return {mount["mountPath"]: volumes[mount["name"]]
            for mount in _container(workload).get("volumeMounts", [])}


def test_every_document_matches_the_kubernetes_schema(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "alignd"


def test_overlay_renders_the_whole_stack(docs: list[dict[str, Any]]) -> None:
    assert set(_by_kind(docs, "Deployment")) == set(WORKLOADS)
    assert set(_by_kind(docs, "Service")) == set(SERVERS)
    assert set(_by_kind(docs, "Job")) == {"alignd-migrate"}
    assert set(_by_kind(docs, "PersistentVolumeClaim")) == {"alignd-artifacts"}
    assert len(_by_kind(docs, "ConfigMap")) == 1


def test_every_container_has_cpu_and_memory_requests_and_limits(
        docs: list[dict[str, Any]]) -> None:
    for name, workload in _pods(docs).items():
        resources = _container(workload)["resources"]
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[bound]), f"{name}: {bound}"


def test_every_pod_runs_as_the_images_non_root_user_on_a_read_only_root(
        docs: list[dict[str, Any]]) -> None:
    for name, workload in _pods(docs).items():
        image = "api" if "alignd-api" in _container(workload)["image"] else "worker"
        pod = _pod(workload)["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert pod["runAsUser"] == pod["runAsGroup"] == _image_uid(image), name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert _pod(workload)["automountServiceAccountToken"] is False, name
        container = _container(workload)["securityContext"]
        assert container == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                             "capabilities": {"drop": ["ALL"]}}, name


def test_processes_write_only_to_volumes(docs: list[dict[str, Any]]) -> None:
    worker_image = _image_env("worker")
    for name, workload in _pods(docs).items():
        writable = ["/tmp"]
        if "alignd-worker" in _container(workload)["image"]:  # torch, vLLM, Hugging Face
            writable += ["/home/alignd", worker_image["HF_HOME"]]
        for path in writable:
            assert set(_mounts(workload)[path]) == {"name", "emptyDir"}, f"{name}: {path}"


@pytest.mark.parametrize("name", WORKLOADS)
def test_workloads_share_the_artifacts_claim(docs: list[dict[str, Any]], name: str) -> None:
    workload = _by_kind(docs, "Deployment")[name]
    assert _mounts(workload)[ARTIFACT_ROOT] == {
        "name": "artifacts", "persistentVolumeClaim": {"claimName": "alignd-artifacts"}}
    claim = _by_kind(docs, "PersistentVolumeClaim")["alignd-artifacts"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


@pytest.mark.parametrize("name", sorted(SERVERS))
def test_servers_probe_readyz_and_healthz_on_their_port(docs: list[dict[str, Any]],
                                                        name: str) -> None:
    container = _container(_by_kind(docs, "Deployment")[name])
    assert container["args"] == ["serve", name.removeprefix("alignd-")]
    assert {"name": "ALIGND_PORT", "value": str(SERVERS[name])} in container["env"]
    assert container["ports"] == [{"name": "http", "containerPort": SERVERS[name]}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert _by_kind(docs, "Service")[name]["spec"]["ports"][0]["port"] == SERVERS[name]


METRICS_PORTS = {**SERVERS, "alignd-worker": 9100}
"""Where each workload serves /metrics: a server on its own port, the worker on one of its own."""


@pytest.mark.parametrize("name", sorted(METRICS_PORTS))
def test_every_workload_is_annotated_for_a_metrics_scrape(docs: list[dict[str, Any]],
                                                          name: str) -> None:
    workload = _by_kind(docs, "Deployment")[name]
    annotations = workload["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true",
                           "prometheus.io/port": str(METRICS_PORTS[name]),
                           "prometheus.io/path": "/metrics"}
    if name == "alignd-worker":  # the port the annotation names is the one it listens on
        env = {e["name"]: e["value"] for e in _container(workload)["env"]}
        settings = WorkerSettings(_env_file=None, **{  # type: ignore[call-arg]
            k.removeprefix("ALIGND_").lower(): v for k, v in env.items()})
        assert (settings.metrics_host, settings.metrics_port) == ("0.0.0.0", 9100)


def test_servers_scale_on_cpu(docs: list[dict[str, Any]]) -> None:
    autoscalers = _by_kind(docs, "HorizontalPodAutoscaler")
    assert set(autoscalers) == set(AUTOSCALED)
    for name, autoscaler in autoscalers.items():
        spec = autoscaler["spec"]
        assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                          "name": name}
        assert 1 <= spec["minReplicas"] < spec["maxReplicas"]
        assert spec["metrics"][0]["resource"]["name"] == "cpu"
        # The autoscaler owns the count: a replicas field would be reset by every apply.
        assert "replicas" not in _by_kind(docs, "Deployment")[name]["spec"]


def test_every_workload_has_a_disruption_budget(docs: list[dict[str, Any]]) -> None:
    budgets = _by_kind(docs, "PodDisruptionBudget")
    assert set(budgets) == set(WORKLOADS)
    for name, budget in budgets.items():
        labels = _by_kind(docs, "Deployment")[name]["spec"]["template"]["metadata"]["labels"]
        assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
        # maxUnavailable, not minAvailable: with one replica the latter would block node drains.
        assert budget["spec"]["maxUnavailable"] == 1


def test_gpu_overlay_puts_the_worker_and_inference_on_gpu_nodes(
        overlay: str, docs: list[dict[str, Any]]) -> None:
    deployments = _by_kind(docs, "Deployment")
    for name, workload in deployments.items():
        pod, container = _pod(workload), _container(workload)
        on_gpu = overlay == "gpu" and name in ON_GPU
        assert ("nvidia.com/gpu" in container["resources"]["limits"]) is on_gpu, name
        assert container["image"].endswith(":cuda") is on_gpu, name
        if on_gpu:
            assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
            assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert {"key": "nvidia.com/gpu", "operator": "Exists",
                    "effect": "NoSchedule"} in pod["tolerations"]
            assert _mounts(workload)["/dev/shm"]["emptyDir"]["medium"] == "Memory"
        else:
            assert "nodeSelector" not in pod and "tolerations" not in pod, name


def test_api_and_migration_use_the_image_without_torch(docs: list[dict[str, Any]]) -> None:
    assert _container(_by_kind(docs, "Deployment")["alignd-api"])["image"] == "alignd-api:latest"
    migrate = _container(_by_kind(docs, "Job")["alignd-migrate"])
    assert (migrate["image"], migrate["args"]) == ("alignd-api:latest", ["migrate"])


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_environment_is_accepted_by_production_settings(
        overlay: str, docs: list[dict[str, Any]], name: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The ConfigMap and the container's env, with the Secret the README has you create."""
    [(config_name, config)] = _by_kind(docs, "ConfigMap").items()
    container = _container(_by_kind(docs, "Deployment")[name])
    assert {"configMapRef": {"name": config_name}} in container["envFrom"]
    for key in [k for k in os.environ if k.startswith("ALIGND_")]:
        monkeypatch.delenv(key)
    secret = {"ALIGND_ADMIN_KEY": "a-secret-of-our-own",
              "ALIGND_DATABASE_URL": "postgresql+psycopg://alignd@db:5432/alignd",
              "ALIGND_BROKER_URL": "redis://redis:6379/0"}
    env = {item["name"]: item["value"] for item in container.get("env", [])}
    for key, value in {**config["data"], **secret, **env}.items():
        monkeypatch.setenv(key, value)

    settings = SETTINGS[name](_env_file=None)

    assert settings.environment == "production"
    assert settings.artifacts_dir == Path(ARTIFACT_ROOT)
    # Prometheus scrapes from a pod address; elsewhere /metrics still wants the admin key.
    assert address_allowed("10.244.1.7", settings.metrics_networks)
    assert not address_allowed("192.0.2.10", settings.metrics_networks)
    queue = "gpu" if overlay == "gpu" else "cpu"
    if isinstance(settings, ApiSettings):
        assert settings.job_queue == queue
    if isinstance(settings, WorkerSettings):
        assert settings.queues == [queue]
    if isinstance(settings, InferenceSettings):
        assert settings.engine == ("vllm" if overlay == "gpu" else "torch")

