"""/v1/files against the real api and PostgreSQL: validation, limits, isolation, delete."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import httpx

from tests.data import jsonl, supervised_rows


def upload(client: httpx.Client, content: bytes, purpose: str = "supervised",
           name: str = "train.jsonl") -> httpx.Response:
    return client.post("/v1/files", data={"purpose": purpose},
                       files={"file": (name, content, "application/jsonl")})


def assert_envelope(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_upload_retrieve_download_and_list(client: httpx.Client) -> None:
    content = jsonl(supervised_rows(10))
    created = upload(client, content)
    assert created.status_code == 200, created.text
    body = created.json()
    assert body["object"] == "file" and body["purpose"] == "supervised"
    assert body["bytes"] == len(content) and body["line_count"] == 10
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    assert client.get(f"/v1/files/{body['id']}").json() == body
    downloaded = client.get(f"/v1/files/{body['id']}/content")
    assert downloaded.content == content
    # user rows, never a page a browser would sniff or render
    assert downloaded.headers["x-content-type-options"] == "nosniff"
    assert downloaded.headers["content-disposition"].startswith("attachment;")
    assert [f["id"] for f in client.get("/v1/files").json()["data"]] == [body["id"]]


def test_a_downloaded_files_name_cannot_break_out_of_its_header(client: httpx.Client) -> None:
    name = 'rows"; filename="evil.html\r\nSet-Cookie: x=1 é.jsonl'
    created = client.post("/v1/files", data={"purpose": "supervised"},
                          files={"file": (name, jsonl(supervised_rows(2)))})
    assert created.status_code == 200, created.text
    downloaded = client.get(f"/v1/files/{created.json()['id']}/content")
    assert downloaded.status_code == 200 and "set-cookie" not in downloaded.headers
    disposition = downloaded.headers["content-disposition"]
    assert disposition.startswith("attachment; filename*=UTF-8''rows"), disposition
    assert not {'"', "\r", "\n"} & set(disposition) and disposition.count(";") == 1


def test_every_row_shape_is_accepted(client: httpx.Client) -> None:
    shapes = {
        "supervised": [{"messages": [{"role": "user", "content": "1+1="},
                                     {"role": "assistant", "content": "2"}]}],
        "preference": [{"prompt": "1+1=", "chosen": "2", "rejected": "3"},
                       {"input": {"messages": [{"role": "user", "content": "1+1="}]},
                        "preferred_output": [{"role": "assistant", "content": "2"}],
                        "non_preferred_output": [{"role": "assistant", "content": "3"}]}],
        "prompts": [{"prompt": "1+1=", "answer": "2"},
                    {"messages": [{"role": "user", "content": "2+2="}], "answer": "4"}],
        "ratings": [{"prompt": "1+1=", "response": "2", "scores": {"correctness": 1.0}}],
    }
    for purpose, rows in shapes.items():
        response = upload(client, jsonl(rows), purpose)
        assert response.status_code == 200, (purpose, response.text)


def test_bad_lines_are_named_and_nothing_is_stored(client: httpx.Client) -> None:
    content = jsonl(supervised_rows(3)) + b'{"prompt": "1+1="}\nnot json\n'
    error = assert_envelope(upload(client, content), 400)
    assert "line 4" in error["message"] and "completion" in error["message"]
    assert "line 5" in error["message"] and "not valid JSON" in error["message"]
    assert "prompt" in error["message"] and error["param"] == "file"
    assert client.get("/v1/files").json()["data"] == []


def test_wrong_purpose_shape_and_unknown_purpose(client: httpx.Client) -> None:
    error = assert_envelope(upload(client, jsonl(supervised_rows(2)), "preference"), 400)
    assert "line 1" in error["message"] and "chosen" in error["message"]
    error = assert_envelope(upload(client, jsonl(supervised_rows(2)), "pretraining"), 400)
    assert "purpose must be one of" in error["message"] and error["param"] == "purpose"
    assert_envelope(upload(client, b"\n\n"), 400)
    assert client.get("/v1/files").json()["data"] == []


def test_upload_over_the_limit_is_413(client: httpx.Client) -> None:
    # the test api is configured with max_upload_bytes=200_000
    big = jsonl(supervised_rows(1)) * 10_000
    error = assert_envelope(upload(client, big), 413)
    assert "limit" in error["message"]
    assert client.get("/v1/files").json()["data"] == []


def test_missing_fields_are_400_with_envelope(client: httpx.Client) -> None:
    response = client.post("/v1/files", data={"purpose": "supervised"})
    error = assert_envelope(response, 400)
    assert error["param"] == "file"


def test_delete_and_isolation(client: httpx.Client, api_url: str, admin: httpx.Client) -> None:
    from tests.conftest import new_project

    file_id = upload(client, jsonl(supervised_rows(2))).json()["id"]
    _, other_key = new_project(admin)
    other = httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {other_key}"})
    assert_envelope(other.get(f"/v1/files/{file_id}"), 404)
    assert_envelope(other.delete(f"/v1/files/{file_id}"), 404)
    assert other.get("/v1/files").json()["data"] == []
    deleted = client.delete(f"/v1/files/{file_id}")
    assert deleted.json() == {"id": file_id, "object": "file", "deleted": True}
    assert_envelope(client.get(f"/v1/files/{file_id}"), 404)


def test_a_chunked_upload_is_cut_at_the_limit(client: httpx.Client) -> None:
    """Without a Content-Length the body was spooled whole before the size check; now the
    api stops reading it at the limit (200,000 bytes here) and answers 413."""
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        boundary = b"--b0undary\r\n"
        yield (boundary + b'Content-Disposition: form-data; name="purpose"\r\n\r\nsupervised\r\n'
               + boundary + b'Content-Disposition: form-data; name="file"; '
               b'filename="big.jsonl"\r\nContent-Type: application/jsonl\r\n\r\n')
        line = jsonl(supervised_rows(1))
        for _ in range(200_000):  # about 12 MB if it were all read
            sent += len(line) * 100
            yield line * 100
        yield b"\r\n--b0undary--\r\n"

    try:
        response = client.post("/v1/files", content=body(),
                               headers={"Content-Type": "multipart/form-data; boundary=b0undary"})
    except httpx.HTTPError:  # the server may close while the client still writes
        response = None
    if response is not None:
        error = assert_envelope(response, 413)
        assert error["code"] == "payload_too_large"
    assert sent < 5_000_000  # the client was stopped long before the end
    assert client.get("/v1/files").json()["data"] == []


def test_a_declared_length_over_the_limit_is_refused_before_reading(client: httpx.Client) -> None:
    response = client.post("/v1/files", content=b"x" * 300_000,
                           headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert assert_envelope(response, 413)["code"] == "payload_too_large"
