"""Schemathesis against the inference service's OpenAPI document, on both engines (see
tests/contract/test_schemathesis_api.py for what is checked)."""

from __future__ import annotations

from tests.contract.test_schemathesis_api import Seeds, contract_failures
from tests.inference.conftest import InferenceWorld


def test_the_inference_service_keeps_its_contract(inference_url: str,
                                                  inference_world: InferenceWorld) -> None:
    failures = contract_failures(inference_url, Seeds(inference_world.key))
    assert not failures, "\n\n".join(failures)
