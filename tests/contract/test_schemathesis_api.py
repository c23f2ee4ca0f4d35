"""Schemathesis against the api's and the reward service's OpenAPI documents (and, from
tests/inference, the inference service's), on loopback with a project's key, bounded
generated requests per operation, in two passes:

- any string, NUL characters included: no 5xx, and every response's status, content type and
  body match what the document declares;
- strings without NUL (refused at the edge for every route, which a schema cannot say per
  field): every request the document calls valid is accepted (2xx, or a 404/409 for ids that
  do not exist), except where the document cannot say what the validator checks
  (`UNDESCRIBED`)."""

from __future__ import annotations

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

from tests.conftest import new_project

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
    "POST /v1/score": "reward specs nest to any depth and name models and graders that must "
                      "exist; the reward service checks them as it builds the scorer",
    "POST /v1/completions": "options that exclude each other (best_of_n with stream or n > 1) "
                            "and OpenAI fields accepted only at their defaults (echo, suffix, "
                            "the penalties), kept in OpenAI's shape for its clients",
    "POST /v1/chat/completions": "the same options, and message contents whose parts must all "
                                 "be text",
}
"""Operations whose validators check what OpenAPI cannot express, and why."""


def exercise(operation: schemathesis.APIOperation, headers: dict[str, str],
             checks: list) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=headers, checks=checks)

    run()


def contract_failures(url: str, headers: dict[str, str]) -> list[str]:
    """Each operation's first failing generated request in each pass, if any, as text."""
    failures = []
    for accepting in (False, True):
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        schema.config.generation.update(allow_x00=not accepting)
        for result in schema.get_all_operations():
            operation = result.ok()
            if accepting and operation.label in UNDESCRIBED:
                continue
            try:
                exercise(operation, headers, [positive_data_acceptance] if accepting else CHECKS)
            except BaseException as exc:  # every operation is tried, and all failures reported
                if isinstance(exc, KeyboardInterrupt):
                    raise
                failures.append(f"{operation.label}: {str(exc)[:1500]}")
    return failures


@pytest.fixture(scope="module")
def project_key(admin: httpx.Client) -> str:
    return new_project(admin)[1]


def test_the_api_keeps_its_contract(api_url: str, project_key: str) -> None:
    failures = contract_failures(api_url, {"Authorization": f"Bearer {project_key}"})
    assert not failures, "\n\n".join(failures)


def test_the_reward_service_keeps_its_contract(session_reward_url: str) -> None:
    failures = contract_failures(session_reward_url, {})
    assert not failures, "\n\n".join(failures)
