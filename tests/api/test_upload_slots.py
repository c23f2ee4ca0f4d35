"""A project's uploads in progress at once are bounded (each may spool up to the upload limit to
disk before the route sees it): past the bound its next upload is a 429 with Retry-After, read
no further; another project's uploads go on, and the project's own once one has finished."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx

from api.main import create_app
from services.settings import ApiSettings
from services.web import ServerThread
from tests.conftest import new_project, wait_for
from tests.data import jsonl, supervised_rows

BOUNDARY = "slowboundary"


def multipart(content: bytes) -> tuple[bytes, bytes]:
    """The head (purpose field and file part's headers) and tail of a one-file form."""
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n"
            f"supervised\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"slow.jsonl\"\r\nContent-Type: application/jsonl\r\n\r\n").encode()
    return head + content, f"\r\n--{BOUNDARY}--\r\n".encode()


def slow_upload(url: str, key: str, release: threading.Event, answers: list[int]) -> None:
    """An upload whose body stops after its first part until ``release``."""
    first, last = multipart(jsonl(supervised_rows(3)))

    def body() -> Iterator[bytes]:
        yield first
        release.wait(60)
        yield last

    answers.append(httpx.post(f"{url}/v1/files", content=body(), timeout=60, headers={
        "Authorization": f"Bearer {key}",
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}).status_code)


def upload(url: str, key: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/files", data={"purpose": "supervised"}, timeout=60,
                      headers={"Authorization": f"Bearer {key}"},
                      files={"file": ("t.jsonl", jsonl(supervised_rows(3)))})


def test_a_project_s_uploads_in_progress_are_bounded(api_settings: ApiSettings,
                                                    admin: httpx.Client) -> None:
    settings = api_settings.model_copy(update={"max_concurrent_uploads_per_project": 2})
    _, key = new_project(admin)
    _, other = new_project(admin)
    release, answers = threading.Event(), []
    app = create_app(settings)
    with ServerThread(app) as server:
        slow = [threading.Thread(target=slow_upload, args=(server.url, key, release, answers))
                for _ in range(2)]
        for thread in slow:
            thread.start()
        try:
            wait_for(lambda: sum(app.state.uploads_in_progress.values()) == 2, 30,
                     interval=0.02, message="both slow uploads to be in progress")
            refused = upload(server.url, key)  # refused before its body is read
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["code"] == "too_many_uploads"
            assert refused.headers["Retry-After"] == "5"
            assert upload(server.url, other).status_code == 200  # another project's go on
        finally:
            release.set()
            for thread in slow:
                thread.join(60)
        assert answers == [200, 200]
        assert upload(server.url, key).status_code == 200  # slots free again
