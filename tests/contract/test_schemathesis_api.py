"""Schemathesis against the api's OpenAPI document, on loopback with a project's key: bounded
generated requests per operation; no 5xx, and every response's status, content type and body
match what the document declares.

Not yet checked: that every schema-valid request is accepted (`positive_data_acceptance`):
the validators still enforce more than the schemas say (a JSONL file's rows, a job's method
sections)."""

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

from tests.conftest import new_project

EXAMPLES = 20
"""Generated requests per operation (bounded, so the suite stays quick)."""
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


def contract_failures(schema: schemathesis.BaseSchema, headers: dict[str, str]) -> list[str]:
    """Each operation's first failing generated request, if any, as text."""
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)

        try:
            run()
        except BaseException as exc:  # every operation is tried, and all failures reported
            if isinstance(exc, KeyboardInterrupt):
                raise
            failures.append(f"{operation.label}: {str(exc)[:1500]}")
    return failures


@pytest.fixture(scope="module")
def project_key(admin: httpx.Client) -> str:
    return new_project(admin)[1]


def test_the_api_keeps_its_contract(api_url: str, project_key: str) -> None:
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    failures = contract_failures(schema, {"Authorization": f"Bearer {project_key}"})
    assert not failures, "\n\n".join(failures)


def test_the_reward_service_keeps_its_contract(session_reward_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{session_reward_url}/openapi.json")
    failures = contract_failures(schema, {})
    assert not failures, "\n\n".join(failures)
