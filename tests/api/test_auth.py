"""Authentication, projects and API keys on the real api."""

from __future__ import annotations

import httpx
import pytest

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


def key_with(admin: httpx.Client, project_id: str, *scopes: str) -> str:
    response = admin.post(f"/v1/admin/projects/{project_id}/api_keys",
                          json={"name": "scoped", "scopes": list(scopes)})
    assert response.status_code == 201, response.text
    assert response.json()["scopes"] == list(scopes)
    return str(response.json()["key"])


def test_a_key_does_only_what_its_scopes_allow(api_url: str, admin: httpx.Client) -> None:
    project_id, full = new_project(admin)
    reader = key_with(admin, project_id, "read")
    scorer = key_with(admin, project_id, "score")

    def call(method: str, path: str, key: str, **kwargs: object) -> httpx.Response:
        return httpx.request(method, f"{api_url}{path}", timeout=30,
                             headers={"Authorization": f"Bearer {key}"}, **kwargs)  # type: ignore[arg-type]

    assert call("GET", "/v1/files", reader).status_code == 200
    refused = call("POST", "/v1/fine_tuning/jobs", reader, json={"model": "m",
                                                                 "training_file": "f"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "missing_scope"
    assert "'train'" in refused.json()["error"]["message"]
    assert call("GET", "/v1/models", scorer).status_code == 403  # no read
    assert call("GET", "/v1/models", full).status_code == 200  # every scope by default
    listed = admin.get(f"/v1/admin/projects/{project_id}/api_keys")
    if listed.status_code == 200:  # listing keys, where the api offers it, shows the scopes
        assert {"read"} in [set(k["scopes"]) for k in listed.json()["data"]]
    for bad in ([], ["owner"], ["bogus"]):
        response = admin.post(f"/v1/admin/projects/{project_id}/api_keys",
                              json={"name": "x", "scopes": bad})
        assert response.status_code == 400
        assert response.json()["error"]["param"].startswith("scopes")


def test_a_key_past_its_rate_gets_a_429_with_retry_after(
        api_settings: object, admin: httpx.Client) -> None:
    from api.main import create_app
    from services.settings import ApiSettings
    from services.web import ServerThread

    project_id, key = new_project(admin)
    limited = ApiSettings(max_upload_bytes=200_000, key_requests_per_minute=3)
    with ServerThread(create_app(limited)) as server:
        headers = {"Authorization": f"Bearer {key}"}
        statuses = [httpx.get(f"{server.url}/v1/files", headers=headers).status_code
                    for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        refused = httpx.get(f"{server.url}/v1/files", headers=headers)
        assert refused.json()["error"]["code"] == "rate_limited"
        assert int(refused.headers["Retry-After"]) >= 1
        other = key_with(admin, project_id, "read")  # the limit is per key
        assert httpx.get(f"{server.url}/v1/files",
                         headers={"Authorization": f"Bearer {other}"}).status_code == 200


def test_the_limit_is_on_by_default(api_url: str, api_settings: object,
                                   admin: httpx.Client) -> None:
    """The session's api runs with the default limit (600 a minute, bursts of 600): a key
    that keeps asking is refused within a few hundred requests more, with Retry-After; the
    admin key is not limited. The other services' defaults, counted in the process."""
    from services.errors import TooManyRequests
    from services.rate_limit import RateLimiter
    from services.settings import ApiSettings, InferenceSettings, RewardSettings

    assert ApiSettings().key_requests_per_minute == 600
    _, key = new_project(admin)
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {key}"}) as http:
        for sent in range(1, 1001):  # the bucket refills 10 a second meanwhile
            refused = http.get("/v1/models")
            if refused.status_code != 200:
                break
    assert refused.status_code == 429 and sent > 600, (sent, refused.text)
    assert int(refused.headers["Retry-After"]) >= 1
    assert admin.get("/v1/admin/projects").status_code == 200
    for settings in (RewardSettings(), InferenceSettings()):
        limiter = RateLimiter(settings.key_requests_per_minute)
        for _ in range(3000):
            limiter.admit("key")
        with pytest.raises(TooManyRequests):
            limiter.admit("key")


def test_a_key_with_the_admin_scope_manages_its_own_project_s_keys(
        api_url: str, admin: httpx.Client) -> None:
    project_id, plain = new_project(admin)
    other_project, _ = new_project(admin)
    assert admin.post(f"/v1/admin/projects/{project_id}/api_keys",
                      json={"name": "d"}).json()["scopes"] == ["read", "train", "generate", "score"]
    manager = key_with(admin, project_id, "admin")

    def as_key(key: str, method: str, path: str, **kwargs: object) -> httpx.Response:
        return httpx.request(method, f"{api_url}/v1/admin{path}", timeout=30,  # type: ignore[arg-type]
                             headers={"Authorization": f"Bearer {key}"}, **kwargs)

    made = as_key(manager, "POST", f"/projects/{project_id}/api_keys",
                  json={"name": "ci", "scopes": ["read"]})
    assert made.status_code == 201 and made.json()["project_id"] == project_id
    revoked = as_key(manager, "DELETE", f"/projects/{project_id}/api_keys/{made.json()['id']}")
    assert revoked.status_code == 200
    elsewhere = as_key(manager, "POST", f"/projects/{other_project}/api_keys", json={})
    assert elsewhere.status_code == 404  # another project's keys do not exist for it
    refused = as_key(plain, "POST", f"/projects/{project_id}/api_keys", json={})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "missing_scope"
    assert as_key(manager, "GET", "/projects").status_code == 401  # projects: the operator's
