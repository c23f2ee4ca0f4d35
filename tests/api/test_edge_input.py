"""Input refused at the edge: NUL characters (which PostgreSQL cannot store) in a URL (every
service) or in the api's JSON bodies get a 400 with the envelope, the connection stays usable
and nothing is stored; a refused value is echoed only in part. The reward and inference
services store no request text and take NUL in theirs (models write it)."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.api.test_files import assert_envelope
from tests.conftest import ADMIN_KEY

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def test_a_nul_in_the_path_or_query_is_a_400_and_the_connection_survives(
        client: httpx.Client) -> None:
    for url in ("/v1/files/file-abc%00def", "/v1/files?after=file-%00", "/v1/models/a%00b"):
        error = assert_envelope(client.get(url), 400)
        assert error["code"] == "nul_character", url
    assert client.get("/v1/files").status_code == 200  # the same keep-alive connection


def test_a_nul_in_a_json_body_is_a_400_and_nothing_is_stored(client: httpx.Client) -> None:
    before = client.get("/v1/fine_tuning/jobs").json()["data"]
    for body in ({"model": "a\u0000b", "training_file": "file-x"},
                 {"model": "m", "training_file": "file-x", "suffix": "s\u0000",
                  "metadata": {"k": "v"}}):
        response = client.post("/v1/fine_tuning/jobs", json=body)
        assert assert_envelope(response, 400)["code"] == "nul_character"
    raw = b'{"model": "a\x00b", "training_file": "file-x"}'  # a raw NUL byte too
    response = client.post("/v1/fine_tuning/jobs", content=raw,
                           headers={"Content-Type": "application/json"})
    assert assert_envelope(response, 400)["code"] == "nul_character"
    assert client.get("/v1/fine_tuning/jobs").json()["data"] == before


def test_an_escaped_backslash_before_u0000_is_not_a_nul(client: httpx.Client) -> None:
    """`"\\\\u0000"` in JSON is a backslash and the text u0000, which is fine to store."""
    body = json.dumps({"model": "no-such-model\\u0000", "training_file": "file-x"})
    assert "\\\\u0000" in body
    response = client.post("/v1/fine_tuning/jobs", content=body,
                           headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 404)
    assert response.json()["error"]["code"] != "nul_character"


def test_the_reward_service_scores_a_nul_but_refuses_one_in_a_url(
        session_reward_url: str) -> None:
    response = httpx.post(f"{session_reward_url}/v1/score", timeout=30, headers=ADMIN, json={
        "items": [{"prompt": "1+1=", "response": "2\u0000"}],
        "reward": {"type": "string_check", "name": "eq", "operation": "like",
                   "input": "{{sample.output_text}}", "reference": "2"}})
    assert response.status_code == 200, response.text
    assert response.json()["data"][0]["score"] == 1.0
    response = httpx.get(f"{session_reward_url}/v1/reward_models?after=%00", timeout=30)
    assert assert_envelope(response, 400)["code"] == "nul_character"


@pytest.mark.parametrize("size", [10_000, 5_000_000])
def test_a_refused_value_is_echoed_only_in_part(admin: httpx.Client, size: int) -> None:
    response = admin.post("/v1/admin/projects", json={"name": "x" * size})
    error = assert_envelope(response, 400)
    assert error["param"] == "name"
    assert len(response.content) < 1_000
    assert f"({size + 2:,} characters)" in error["message"]  # repr adds the quotes


def test_a_deeply_nested_line_is_a_400_naming_it(client: httpx.Client) -> None:
    from tests.api.test_files import upload
    from tests.data import jsonl, supervised_rows

    nested = b'{"a":' * 5_000 + b"1" + b"}" * 5_000  # past Python's recursion limit
    response = upload(client, jsonl(supervised_rows(2)) + nested + b"\n")
    error = assert_envelope(response, 400)
    assert "line 3: JSON nested too deeply" in error["message"]
    assert client.get("/v1/files").json()["data"] == []


def test_a_wrong_method_is_a_405_with_allow(client: httpx.Client) -> None:
    response = client.put("/v1/files")
    assert assert_envelope(response, 405)["type"] == "invalid_request_error"
    assert "POST" in response.headers["Allow"]  # Starlette names the first matching route's


@pytest.mark.parametrize("cursor", ["ftevent-²", "ftevent-٣", "ftevent-99999999999999999999",
                                    "ftevent-", "42"])
def test_an_event_cursor_that_is_not_ascii_digits_is_a_400(client: httpx.Client,
                                                            cursor: str) -> None:
    """`str.isdigit` took superscripts and other scripts' digits, which `int` then refused
    (a 500), and a cursor past bigint reached PostgreSQL (another 500)."""
    response = client.get("/v1/fine_tuning/jobs/ftjob-x/events", params={"after": cursor})
    assert assert_envelope(response, 400)["param"] == "after"
