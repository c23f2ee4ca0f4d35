"""Per-key rate limits across api replicas: two real api apps on one PostgreSQL and the test
session's Redis count a key's requests together; with no Redis answering, each counts its own."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import httpx

from services.settings import ApiSettings
from services.web import ServerThread, free_port
from tests.api.test_auth import key_with
from tests.conftest import new_project

LIMIT = 3


@contextmanager
def replicas(count: int, settings: ApiSettings) -> Iterator[list[str]]:
    """``count`` api apps (their URLs), as replicas of one deployment behind a load balancer."""
    from api.main import create_app

    with ExitStack() as stack:
        yield [stack.enter_context(ServerThread(create_app(settings))).url for _ in range(count)]


def files(url: str, key: str) -> httpx.Response:
    return httpx.get(f"{url}/v1/files", headers={"Authorization": f"Bearer {key}"}, timeout=30)


def assert_rate_limited(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["error"]["type"] == "rate_limit_error"
    assert response.json()["error"]["code"] == "rate_limited"
    assert int(response.headers["Retry-After"]) >= 1


def test_replicas_share_a_key_s_limit_through_redis(
        api_settings: ApiSettings, broker_url: str, admin: httpx.Client) -> None:
    limited = ApiSettings(key_requests_per_minute=LIMIT)
    assert limited.rate_limit_store == broker_url  # the broker's Redis, by default
    project_id, key = new_project(admin)
    other = key_with(admin, project_id, "read")
    with replicas(2, limited) as (first, second):
        answered = [files(url, key).status_code for url in (first, second, first)]
        assert answered == [200] * LIMIT
        assert_rate_limited(files(second, key))
        assert_rate_limited(files(first, key))
        assert files(first, other).status_code == 200  # the limit is per key
        assert files(second, other).status_code == 200


def test_a_redis_that_does_not_answer_leaves_each_replica_its_own_limit(
        api_settings: ApiSettings, admin: httpx.Client) -> None:
    _, key = new_project(admin)
    closed = ApiSettings(key_requests_per_minute=LIMIT,
                         rate_limit_url=f"redis://127.0.0.1:{free_port()}/0")
    assert closed.rate_limit_store == closed.rate_limit_url
    with replicas(1, closed) as (url,):
        assert [files(url, key).status_code for _ in range(LIMIT)] == [200] * LIMIT
        assert_rate_limited(files(url, key))
