"""Fixtures of the CLI's tests."""

from __future__ import annotations

import httpx
import pytest


@pytest.fixture
def key(client: httpx.Client) -> str:
    """The API key of `client`'s fresh project, for the CLI's --key."""
    return client.headers["Authorization"].removeprefix("Bearer ")
