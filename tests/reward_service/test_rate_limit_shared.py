"""The reward service's per-key rate limit, taken on the event loop, shared by two real
replicas through the test session's Redis."""

from __future__ import annotations

import httpx

from tests.conftest import reward_service
from tests.services.test_key_cache import make_key

EXACT = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
         "reference": "{{item.answer}}", "operation": "eq"}


def score(url: str, key: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/score", timeout=60, headers={"Authorization": f"Bearer {key}"},
                      json={"items": [{"prompt": "1+1=", "response": "2", "item": {"answer": "2"}}],
                            "reward": EXACT})


def test_reward_replicas_share_a_key_s_limit(database_url: str, broker_url: str) -> None:
    _, _, key = make_key(database_url)
    _, _, other = make_key(database_url)
    shared = {"key_requests_per_minute": 2, "rate_limit_url": broker_url}
    with reward_service(database_url, **shared) as first, \
            reward_service(database_url, **shared) as second:
        assert [score(url, key).status_code for url in (first, second)] == [200, 200]
        for url in (first, second):
            refused = score(url, key)
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["code"] == "rate_limited"
            assert int(refused.headers["Retry-After"]) >= 1
        assert score(second, other).status_code == 200
