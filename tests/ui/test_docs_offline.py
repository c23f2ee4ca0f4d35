"""Each service's /docs and /redoc render in a real Chromium that may reach nothing but the
service itself, as on an air-gapped cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.deploy.test_docs_assets import service_url  # noqa: F401 - the fixture

RENDERED = {"/docs": ".swagger-ui .opblock", "/redoc": ".api-content h1"}
"""What each page shows once its script has run on the service's OpenAPI document."""
REDOCLY_CREDIT = "https://cdn.redoc.ly/redoc/logo-mini.svg"
"""The one request ReDoc's own script makes elsewhere: the logo beside its "API docs by
Redocly" credit, which offline shows as the text alone."""


@pytest.mark.parametrize("page", sorted(RENDERED))
def test_docs_render_with_nothing_but_the_service_reachable(
        browser: Any, service_url: str, page: str, artifact_dir: Path) -> None:  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    elsewhere: list[str] = []
    errors: list[str] = []

    def only_the_service(route: Any) -> None:
        if urlsplit(route.request.url).netloc == urlsplit(service_url).netloc:
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_service)
    tab = context.new_page()
    tab.on("pageerror", lambda error: errors.append(str(error)))
    try:
        tab.goto(service_url + page)
        tab.wait_for_selector(RENDERED[page], timeout=30_000)
        name = urlsplit(service_url).port
        tab.screenshot(path=str(artifact_dir / f"docs{page.replace('/', '-')}-{name}.png"))
    finally:
        context.close()
    assert [url for url in elsewhere if url != REDOCLY_CREDIT] == [] and errors == []
