"""Every service's /docs and /redoc load their scripts, stylesheets and icon from the service
itself, never from a CDN, so the pages work on a cluster with no way out."""

from __future__ import annotations

from collections.abc import Iterator
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from services.settings import InferenceSettings, RewardSettings
from services.web import ServerThread

SERVICES = ("api", "reward", "inference")
PAGES = ("/docs", "/redoc")


@pytest.fixture(scope="module", params=SERVICES)
def service_url(request: pytest.FixtureRequest, database_url: str) -> Iterator[str]:
    """Each service's real app on a loopback port (the api: the session's)."""
    if request.param == "api":
        yield request.getfixturevalue("api_url")
        return
    if request.param == "reward":
        from reward_service.main import create_app as create_reward_app

        app = create_reward_app(RewardSettings(_env_file=None, environment="test",  # type: ignore[call-arg]
                                               database_url=database_url))
    else:
        from inference.main import create_app as create_inference_app

        app = create_inference_app(InferenceSettings(_env_file=None, environment="test",  # type: ignore[call-arg]
                                                     database_url=database_url, engine="torch"))
    with ServerThread(app) as server:
        yield server.url


class Assets(HTMLParser):
    """The URLs a page loads: every script's src and every link's href."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"script": "src", "link": "href", "img": "src"}.get(tag)
        value = dict(attrs).get(wanted) if wanted else None
        if value:
            self.urls.append((tag, value))


def page_assets(base_url: str, page: str) -> list[tuple[str, str]]:
    response = httpx.get(base_url + page, timeout=30)
    assert response.status_code == 200, response.text
    parser = Assets()
    parser.feed(response.text)
    return [(tag, urljoin(base_url + page, url)) for tag, url in parser.urls]


@pytest.mark.parametrize("page", PAGES)
def test_docs_pages_load_every_asset_from_the_service(service_url: str, page: str) -> None:
    assets = page_assets(service_url, page)
    tags = {tag for tag, _ in assets}
    assert "script" in tags and (page != "/docs" or "link" in tags), assets
    for _, url in assets:
        assert urlsplit(url).netloc == urlsplit(service_url).netloc, f"{page} loads {url}"
        response = httpx.get(url, timeout=30)
        assert response.status_code == 200, url
        assert len(response.content) > 4000, url  # the real file, not a stub or an error page
