"""X-Forwarded-For names the client only when a configured proxy sent it: a client on loopback
(uvicorn's default trusts any) cannot claim an address that /metrics lets in."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from reward_service.main import create_app
from services.settings import RewardSettings
from services.web import ServerThread, proxy_options


@contextmanager
def served(database_url: str, **settings: object) -> Iterator[str]:
    """The reward app as `run_server` serves it (its proxy options), on loopback, with /metrics
    open to 10.0.0.0/8 only."""
    config = RewardSettings(environment="test", database_url=database_url,
                            metrics_networks=["10.0.0.0/8"], **settings)
    with ServerThread(create_app(config), **proxy_options(config)) as server:
        yield server.url


@pytest.mark.parametrize("trusted, status", [([], 403), (["127.0.0.1"], 200)])
def test_forwarded_for_is_believed_only_from_a_trusted_proxy(
        database_url: str, trusted: list[str], status: int) -> None:
    with served(database_url, trusted_proxies=trusted) as url:
        assert httpx.get(f"{url}/metrics").status_code == 403  # loopback itself is not 10/8
        claimed = httpx.get(f"{url}/metrics", headers={"X-Forwarded-For": "10.1.2.3"})
        assert claimed.status_code == status, claimed.text

