"""The reward service's /metrics (requests by route, batch sizes, model cache hits) and request
ids, on a reward service of this module's own (its counters start at zero)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.test_api_observability import metric_value
from tests.conftest import reward_service
from tests.reward_service.test_scoring import ITEMS, score


@pytest.fixture(scope="module")
def fresh_reward_url(database_url: str, reward_world: Any) -> Iterator[str]:
    with reward_service(database_url, require_api_key=False, max_wait_ms=5.0) as url:
        yield url


def test_scoring_moves_batch_sizes_cache_hits_and_request_counts(
    fresh_reward_url: str, reward_world: Any,
) -> None:
    spec = {"type": "reward_model", "model": reward_world.single}
    before = httpx.get(f"{fresh_reward_url}/metrics").text
    assert metric_value(before, 'alignd_reward_model_cache_total{result="miss"}') is None
    for _ in range(3):
        assert score(fresh_reward_url, ITEMS, spec).status_code == 200
    text = httpx.get(f"{fresh_reward_url}/metrics").text
    assert metric_value(text, 'alignd_reward_model_cache_total{result="miss"}') == 1
    assert metric_value(text, 'alignd_reward_model_cache_total{result="hit"}') == 2
    assert metric_value(text, "alignd_reward_batch_rows_sum") == 3 * len(ITEMS)
    passes = metric_value(text, "alignd_reward_batch_rows_count")
    assert passes is not None and 3 <= passes <= 3 * len(ITEMS)
    assert metric_value(text, 'alignd_http_requests_total{method="POST",route="/v1/score",'
                              'status="200"}') == 3


def test_a_request_id_is_echoed_on_scores_and_errors(fresh_reward_url: str) -> None:
    refused = httpx.post(f"{fresh_reward_url}/v1/score", headers={"X-Request-ID": "rw-1"},
                         json={"items": ITEMS[:1], "reward": {"type": "nope"}})
    assert refused.status_code == 400 and refused.headers["X-Request-ID"] == "rw-1"
    text = httpx.get(f"{fresh_reward_url}/metrics").text
    assert metric_value(text, 'alignd_http_requests_total{method="POST",route="/v1/score",'
                              'status="400"}') == 1
