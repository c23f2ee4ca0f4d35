"""Fixtures the api's tests share: two projects of their own, one owning what a test makes and
one that must not see it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.api.test_models import Project


@pytest.fixture
def owner(api_url: str, admin: httpx.Client) -> Iterator[Project]:
    project = Project(api_url, admin)
    yield project
    project.http.close()


@pytest.fixture
def stranger(api_url: str, admin: httpx.Client) -> Iterator[Project]:
    project = Project(api_url, admin)
    yield project
    project.http.close()
