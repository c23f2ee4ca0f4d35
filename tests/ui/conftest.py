"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright's Python
package; `make test` installs it), against the session's real api."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("ALIGND_TEST_CHROMIUM") or shutil.which("chromium") \
    or shutil.which("chromium-browser")
"""The browser: $ALIGND_TEST_CHROMIUM, else `chromium` on the PATH."""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One browser per test module: Playwright's sync API runs an event loop in the main
    thread while it is open, and a test elsewhere that calls asyncio.run() afterwards (in the
    same process, as a parallel run orders them) must not find it running."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM:
        pytest.fail("the dashboard's tests need Debian's chromium: `apt-get install chromium` "
                    "as root (`make test` does), or set ALIGND_TEST_CHROMIUM to a Chromium")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


class Page:
    """A fresh browser tab (its own session storage) that records the page's script errors and
    console errors, Content-Security-Policy refusals among them."""

    def __init__(self, browser: Any, api_url: str):
        self.api_url = api_url
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.tab = self.context.new_page()
        self.tab.set_default_timeout(20_000)
        self.errors: list[str] = []
        self.tab.on("pageerror", lambda error: self.errors.append(str(error)))
        self.tab.on("console", lambda message: message.type == "error"
                    and self.errors.append(message.text))

    def log_in(self, key: str) -> None:
        self.tab.goto(f"{self.api_url}/")  # redirected to /ui/
        self.tab.fill("#api-key", key)
        self.tab.click("#login-form button")


@pytest.fixture
def page(browser: Any, api_url: str) -> Iterator[Page]:
    opened = Page(browser, api_url)
    yield opened
    opened.context.close()


@pytest.fixture
def artifact_dir(tmp_path: Path) -> Path:
    """Where a test leaves what a person may want to look at (screenshots):
    $ALIGND_TEST_ARTIFACTS when set, else the test's temporary folder."""
    folder = Path(os.environ.get("ALIGND_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
