"""PostgreSQL stopped under a running api and started again: requests meanwhile get a 503 with
the envelope (they were 500s), the api reconnects by itself afterwards, and nothing stored
before is lost. A PostgreSQL of its own (the embedded one) so the shared one keeps running."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from services.web import ServerThread

pytestmark = pytest.mark.slow


def test_requests_during_a_database_outage_get_503_and_the_api_recovers(
        tmp_path: Path, api_settings: object) -> None:
    from api.main import create_app
    from services.db.migrate import upgrade
    from services.embedded import embedded_database_url, stop_embedded_postgres
    from services.settings import ApiSettings
    from tests.conftest import ADMIN_KEY

    folder = tmp_path / "postgres"
    url = embedded_database_url(folder)
    upgrade(url)
    settings = ApiSettings(database_url=url, max_upload_bytes=200_000)
    try:
        with ServerThread(create_app(settings)) as api, httpx.Client(
                base_url=api.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                timeout=30) as admin:
            project = admin.post("/v1/admin/projects", json={"name": "outage"})
            assert project.status_code == 201, project.text
            stop_embedded_postgres(folder)
            during = admin.get("/v1/admin/projects")
            assert during.status_code == 503, during.text
            assert during.json()["error"]["code"] == "database_unavailable"
            assert during.headers["Retry-After"] == "5"
            assert admin.get("/readyz").status_code == 503
            restart(folder)
            after = admin.get("/v1/admin/projects")  # the same api, reconnected
            assert after.status_code == 200, after.text
            assert project.json()["id"] in [p["id"] for p in after.json()["data"]]
    finally:
        stop_embedded_postgres(folder)


def restart(folder: Path) -> None:
    """Start the folder's PostgreSQL again from a process of its own, as `alignd up` would
    (pgserver remembers, per process, servers it started, and would not start this one)."""
    import subprocess
    import sys

    code = ("import sys; from pathlib import Path; from services.embedded import "
            "_start_postgres; _start_postgres(Path(sys.argv[1]))")
    subprocess.run([sys.executable, "-c", code, str(folder)], check=True, timeout=120)
