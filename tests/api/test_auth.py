"""Authentication, projects and API keys on the real api."""

from __future__ import annotations

import httpx

from tests.conftest import ADMIN_KEY, new_project


def test_missing_and_wrong_keys_are_401(api_url: str) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        response = httpx.get(f"{api_url}/v1/files", headers=headers)
        assert response.status_code == 401, response.text
        assert response.json()["error"]["type"] == "authentication_error"


def test_admin_endpoints_need_the_admin_key(api_url: str, admin: httpx.Client) -> None:
    _, key = new_project(admin)
    response = httpx.get(f"{api_url}/v1/admin/projects", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 401
    assert admin.get("/v1/admin/projects").status_code == 200


def test_project_names_are_unique_and_validated(admin: httpx.Client) -> None:
    assert admin.post("/v1/admin/projects", json={"name": "unique-name-x"}).status_code == 201
    duplicate = admin.post("/v1/admin/projects", json={"name": "unique-name-x"})
    assert duplicate.status_code == 409 and duplicate.json()["error"]["param"] == "name"
    bad = admin.post("/v1/admin/projects", json={"name": "has spaces"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "name"


def test_revoked_key_stops_working(api_url: str, admin: httpx.Client) -> None:
    project_id, first = new_project(admin)
    second = admin.post(f"/v1/admin/projects/{project_id}/api_keys", json={"name": "b"}).json()
    assert second["key"].startswith("sk-alignd-") and ADMIN_KEY not in second["key"]

    def status(key: str) -> int:
        return httpx.get(f"{api_url}/v1/files", headers={"Authorization": f"Bearer {key}"}).status_code

    assert status(second["key"]) == 200
    revoked = admin.delete(f"/v1/admin/projects/{project_id}/api_keys/{second['id']}")
    assert revoked.status_code == 200
    assert status(second["key"]) == 401
    assert status(first) == 200


def test_keys_are_stored_hashed(admin: httpx.Client, database_url: str) -> None:
    from sqlalchemy import create_engine, text

    project_id, key = new_project(admin)
    with create_engine(database_url).connect() as conn:
        stored = conn.execute(text("select key_hash from api_keys where project_id = :p"),
                              {"p": project_id}).scalars().all()
    assert stored and key not in stored and all(len(h) == 64 for h in stored)
