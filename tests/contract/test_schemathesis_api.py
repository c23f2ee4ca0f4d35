"""Schemathesis against the api's and the reward service's OpenAPI documents (and, from
tests/inference, the inference service's), on loopback with a project's key (the admin key for
`/v1/admin` routes), bounded generated requests per operation, in two passes:

- any string, NUL characters included: no 5xx, and every response's status, content type and
  body match what the document declares;
- strings without NUL (refused at the edge for every route, which a schema cannot say per
  field): every request the document calls valid is accepted — 2xx and nothing else — except
  where the document cannot say what the validator checks (`UNDESCRIBED`).

Path parameters are ids that exist (`Seeds`): a project with a file, a job trained by a real
worker (its checkpoints, its model), so the generated queries and bodies reach the code behind
the lookup instead of stopping at a 404. An operation that removes or ends what it is given
gets a fresh one for every generated request."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.checks import positive_data_acceptance

from services.db.engine import session_factory, session_scope
from services.db.models import RegisteredModel
from services.registry import register_model
from tests.api.test_files import upload
from tests.conftest import ADMIN_KEY, WorkerProcess, cancel_queued, new_project
from tests.data import jsonl, supervised_rows
from tests.trainer.test_worker import start_job, wait_status

EXAMPLES = 20
"""Generated requests per operation and pass (bounded, so the suite stays quick)."""
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
UNDESCRIBED = {
    "POST /v1/files": "a file's rows (JSON lines whose fields depend on the purpose) are its "
                      "content, which the multipart schema describes as bytes",
    "POST /v1/fine_tuning/jobs": "hyperparameters that bound each other (max_new_tokens below "
                                 "max_seq_length) and reward specs, which the reward service "
                                 "checks as POST /v1/score would",
    "POST /v1/admin/models": "a base model's path must be a folder on the services' disk that "
                             "holds a loadable checkpoint",
    "POST /v1/score": "reward specs nest to any depth and name models and graders that must "
                      "exist; the reward service checks them as it builds the scorer",
    "POST /v1/completions": "options that exclude each other (best_of_n with stream or n > 1) "
                            "and OpenAI fields accepted only at their defaults (echo, suffix, "
                            "the penalties), kept in OpenAI's shape for its clients",
    "POST /v1/chat/completions": "the same options, and message contents whose parts must all "
                                 "be text",
}
"""Operations whose validators check what OpenAPI cannot express, and why."""


@dataclass
class Seeds:
    """What a generated request is sent with: a project key (the admin key for admin routes),
    ids that exist for its path parameters (``shared``), and, for an operation that removes or
    ends what it is given, a factory of fresh ones (``fresh``, by operation label); by
    operation label, list cursors that exist (``cursors``: a query parameter and an id) and a
    body field that must be unique (``unique``: a counter is appended to the generated
    value)."""

    key: str
    shared: dict[str, str] = field(default_factory=dict)
    fresh: dict[str, Callable[[], dict[str, str]]] = field(default_factory=dict)
    cursors: dict[str, tuple[str, str]] = field(default_factory=dict)
    unique: dict[str, str] = field(default_factory=dict)
    sent: int = 0

    def headers(self, operation: schemathesis.APIOperation) -> dict[str, str]:
        key = ADMIN_KEY if operation.path.startswith("/v1/admin") else self.key
        return {"Authorization": f"Bearer {key}"}

    def path_parameters(self, operation: schemathesis.APIOperation) -> dict[str, str]:
        if operation.label in self.fresh:
            return self.fresh[operation.label]()
        return self.shared

    def seed(self, case: schemathesis.Case) -> None:
        """Put ids that exist (and unique values) into a generated request."""
        label = case.operation.label
        if case.path_parameters:
            ids = self.path_parameters(case.operation)
            case.path_parameters = {name: ids.get(name, value)
                                    for name, value in case.path_parameters.items()}
        if label in self.cursors and case.query and self.cursors[label][0] in case.query:
            name, cursor = self.cursors[label]
            case.query = {**case.query, name: cursor}
        if label in self.unique and isinstance(case.body, dict) and self.unique[label] in case.body:
            self.sent += 1
            name = self.unique[label]
            case.body = {**case.body, name: f"{case.body[name][:191]}-{self.sent:08x}"}


def exercise(operation: schemathesis.APIOperation, seeds: Seeds, checks: list) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def run(case: schemathesis.Case) -> None:
        seeds.seed(case)
        case.call_and_validate(headers=seeds.headers(operation), checks=checks)

    run()


def contract_failures(url: str, seeds: Seeds) -> list[str]:
    """Each operation's first failing generated request in each pass, if any, as text."""
    failures = []
    for accepting in (False, True):
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        schema.config.generation.update(allow_x00=not accepting)
        schema.config.checks.positive_data_acceptance.expected_statuses = ["2XX"]
        for result in schema.get_all_operations():
            operation = result.ok()
            if accepting and operation.label in UNDESCRIBED:
                continue
            try:
                exercise(operation, seeds, [positive_data_acceptance] if accepting else CHECKS)
            except BaseException as exc:  # every operation is tried, and all failures reported
                if isinstance(exc, KeyboardInterrupt):
                    raise
                failures.append(f"{operation.label}: {str(exc)[:1500]}")
    return failures


@pytest.fixture(scope="module")
def seeds(api_url: str, admin: httpx.Client, service_env: dict[str, str],
          artifact_root: Path, database_url: str, tiny_model_dir: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeds]:
    """A project with a file and a job a real worker trained (two checkpoints, a LoRA adapter,
    which downloads whole or merged); the worker is stopped before the passes, so the jobs they create stay queued until cancelled."""
    project_id, key = new_project(admin)
    rows = jsonl(supervised_rows(16, seed=2))
    worker = WorkerProcess(service_env, tmp_path_factory.mktemp("w") / "worker.log",
                           ALIGND_TORCH_THREADS="1").start()
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {key}"},
                      timeout=60) as http:
        training = upload(http, rows).json()["id"]
        try:
            job = wait_status(http, start_job(http, training, max_steps=2, batch_size=4,
                                              checkpoint_every=1, lora={"r": 4}),
                              {"succeeded", "failed", "cancelled"}, 300, worker)
        finally:
            worker.stop()
        assert job["status"] == "succeeded", job
        model = job["fine_tuned_model"]
        with session_scope(session_factory(database_url)) as session:
            trained = session.get(RegisteredModel, model)
            trained_path, kind, base = Path(trained.path), trained.kind, trained.base_model

        def fresh_file() -> dict[str, str]:
            return {"file_id": upload(http, rows).json()["id"]}

        def fresh_job() -> dict[str, str]:
            return {"job_id": start_job(http, training, max_steps=2, batch_size=4)}

        def fresh_model() -> dict[str, str]:
            model_id = f"{model}-copy-{uuid.uuid4().hex[:8]}"
            copy = artifact_root / "contract" / model_id.replace(":", "_")
            shutil.copytree(trained_path, copy)
            with session_scope(session_factory(database_url)) as session:
                register_model(session, model_id=model_id, project_id=project_id,
                               kind=kind, path=str(copy), base_model=base,
                               job_id=job["id"])
            return {"model_id": model_id}

        def fresh_key() -> dict[str, str]:
            made = admin.post(f"/v1/admin/projects/{project_id}/api_keys", json={"name": "c"})
            return {"project_id": project_id, "key_id": made.json()["id"]}

        def fresh_base_model() -> dict[str, str]:
            model_id = f"contract-base-{uuid.uuid4().hex[:8]}"
            made = admin.post("/v1/admin/models", json={"id": model_id,
                                                        "path": str(tiny_model_dir)})
            assert made.status_code == 201, made.text
            return {"model_id": model_id}

        yield Seeds(key, shared={"file_id": training, "job_id": job["id"], "model_id": model,
                                 "project_id": project_id},
                    fresh={"DELETE /v1/files/{file_id}": fresh_file,
                           "POST /v1/fine_tuning/jobs/{job_id}/cancel": fresh_job,
                           "DELETE /v1/models/{model_id}": fresh_model,
                           "DELETE /v1/admin/projects/{project_id}/api_keys/{key_id}": fresh_key,
                           "DELETE /v1/admin/models/{model_id}": fresh_base_model},
                    cursors={"GET /v1/files": ("after", training),
                             "GET /v1/fine_tuning/jobs": ("after", job["id"])},
                    unique={"POST /v1/admin/projects": "name"})
        cancel_queued(http)


def test_the_api_keeps_its_contract(api_url: str, seeds: Seeds) -> None:
    """Slow (about a minute and a half): a real worker trains the seeded job, then every
    operation is sent 2 × 20 generated requests."""
    failures = contract_failures(api_url, seeds)
    assert not failures, "\n\n".join(failures)


def test_the_reward_service_keeps_its_contract(session_reward_url: str,
                                               admin: httpx.Client) -> None:
    failures = contract_failures(session_reward_url, Seeds(new_project(admin)[1]))
    assert not failures, "\n\n".join(failures)
