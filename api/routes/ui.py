"""The dashboard at /ui: static HTML, CSS and JavaScript that call the JSON API in the browser
with the project key the user typed in. The pages themselves hold no data and need no key;
what a project sees is what the API shows that key."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from services.errors import NotFound

UI_DIR = Path(__file__).resolve().parent.parent / "ui"

ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "vendor/uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "vendor/uPlot.min.css": "text/css; charset=utf-8",
}
"""Every file the dashboard serves, with its type: nothing else under api/ui is reachable."""

SECURITY_HEADERS = {
    # Scripts and styles only from these files (no inline script can run, whatever a page
    # shows); requests only to this origin, where the API is.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
@router.get("/ui")
def to_the_dashboard() -> RedirectResponse:
    return RedirectResponse("/ui/")


@router.get("/ui/")
def page() -> FileResponse:
    return asset("index.html")


@router.get("/ui/{name:path}")
def asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"the dashboard has no file {name!r}", param="name")
    return FileResponse(UI_DIR / name, media_type=media_type, headers=SECURITY_HEADERS)
