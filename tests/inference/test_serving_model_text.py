"""Whatever a model writes is served: completions and chats (whole and streamed, with
logprobs) from byte-level checkpoints that write NUL, control characters and bytes that are not
UTF-8 come back as valid JSON (JSON escapes the controls itself: ``\\u0000``); an output that
ends inside a UTF-8 sequence still finishes, with U+FFFD for the cut character; a chat whose
history holds the model's own NULs is taken (a multi-turn client sends them back); best-of-N
scores such text. The requests run on the torch engine (the text comes from `inference.text`,
which both engines share)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.db.engine import session_factory, session_scope
from services.registry import declare_base_models
from services.web import ServerThread
from tests.byte_models import make_byte_writer
from tests.inference.conftest import InferenceWorld, inference_settings

WRITERS = {"nul": b"\x00", "cut": b"\xe2", "mixed": b"\x00\x1b\x7f\xff\xe2"}
"""Each model's favoured bytes: NUL only; a UTF-8 lead byte (of a 3-byte character) only, so
no character ever completes; NUL, ESC, DEL, a byte that is never UTF-8 and the lead byte."""
TOKENS = 8


@pytest.fixture(scope="module")
def writers(family_models: dict[str, Path], database_url: str,
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Each writer's registry id (a base model every project sees)."""
    root = tmp_path_factory.mktemp("byte-writers")
    tag = uuid.uuid4().hex[:8]
    paths = {f"bytes-{name}-{tag}": make_byte_writer(family_models["qwen2"], root / name, favoured)
             for name, favoured in WRITERS.items()}
    with session_scope(session_factory(database_url)) as session:
        declare_base_models(session, {model_id: str(path) for model_id, path in paths.items()})
    return {name: f"bytes-{name}-{tag}" for name in WRITERS}


@pytest.fixture(scope="module")
def url(database_url: str, grader_reward_url: str, writers: dict[str, str]) -> Iterator[str]:
    from inference.main import create_app

    settings = inference_settings(database_url, grader_reward_url, engine="torch")
    with ServerThread(create_app(settings)) as server:
        yield server.url


@pytest.fixture
def headers(inference_world: InferenceWorld) -> dict[str, str]:
    return {"Authorization": f"Bearer {inference_world.key}"}


def post(url: str, path: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    response = httpx.post(f"{url}{path}", json=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    return json.loads(response.content)  # type: ignore[no-any-return]


def events(url: str, path: str, body: dict[str, Any],
           headers: dict[str, str]) -> list[dict[str, Any]]:
    """A stream's events, each parsed as JSON (every line must be)."""
    with httpx.stream("POST", f"{url}{path}", json={**body, "stream": True}, headers=headers,
                      timeout=60) as response:
        assert response.status_code == 200, response.read()
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def test_a_completion_of_nuls_is_json_whole_and_streamed(
        url: str, writers: dict[str, str], headers: dict[str, str]) -> None:
    body = {"model": writers["nul"], "prompt": "12+7=", "max_tokens": TOKENS, "logprobs": 2}
    whole = post(url, "/v1/completions", body, headers)
    choice = whole["choices"][0]
    assert choice["text"] == "\x00" * TOKENS and choice["finish_reason"] == "length"
    assert choice["logprobs"]["tokens"] == ["\x00"] * TOKENS
    chunks = events(url, "/v1/completions", body, headers)
    assert "".join(c["choices"][0]["text"] for c in chunks) == "\x00" * TOKENS
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_a_chat_with_the_model_s_nuls_in_its_history(
        url: str, writers: dict[str, str], headers: dict[str, str]) -> None:
    body = {"model": writers["nul"], "max_tokens": TOKENS, "logprobs": True, "top_logprobs": 1,
            "messages": [{"role": "user", "content": "12+7="},
                         {"role": "assistant", "content": "\x00\x00\ufffd"},
                         {"role": "user", "content": "again, \x00 and all"}]}
    choice = post(url, "/v1/chat/completions", body, headers)["choices"][0]
    assert choice["message"]["content"] == "\x00" * TOKENS
    assert [t["bytes"] for t in choice["logprobs"]["content"]] == [[0]] * TOKENS
    chunks = events(url, "/v1/chat/completions", body, headers)
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert streamed == "\x00" * TOKENS


def test_an_output_that_ends_inside_a_character_still_finishes(
        url: str, writers: dict[str, str], headers: dict[str, str]) -> None:
    """Every token is the lead byte of a 3-byte character: no window of the incremental
    decoder ever ends cleanly, so all of the text comes out when the output ends."""
    body = {"model": writers["cut"], "prompt": "12+7=", "max_tokens": TOKENS}
    whole = post(url, "/v1/completions", body, headers)["choices"][0]
    assert whole["text"] == "\ufffd" * TOKENS and whole["finish_reason"] == "length"
    chunks = events(url, "/v1/completions", body, headers)
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_sampled_bytes_stream_as_the_whole_text(
        url: str, writers: dict[str, str], headers: dict[str, str]) -> None:
    body = {"model": writers["mixed"], "prompt": "12+7=", "max_tokens": 24, "n": 3, "seed": 4,
            "temperature": 1.0}
    whole = sorted(post(url, "/v1/completions", body, headers)["choices"],
                   key=lambda c: c["index"])
    texts = [c["text"] for c in whole]
    assert all(texts) and any("\x00" in t for t in texts) and any("\ufffd" in t for t in texts)
    streamed = [""] * 3
    for chunk in events(url, "/v1/completions", body, headers):
        for choice in chunk["choices"]:
            streamed[choice["index"]] += choice["text"]
    assert streamed == texts


def test_best_of_n_scores_nul_text(url: str, writers: dict[str, str],
                                   headers: dict[str, str]) -> None:
    body = {"model": writers["nul"], "prompt": "12+7=", "max_tokens": 4,
            "best_of_n": {"n": 2, "return_all": True, "item": {"answer": "\x00"},
                          "reward": {"type": "string_check", "name": "nul", "operation": "like",
                                     "input": "{{sample.output_text}}",
                                     "reference": "{{item.answer}}"}}}
    response = post(url, "/v1/completions", body, headers)
    assert response["choices"][0]["text"] == "\x00" * 4
    assert [s["score"] for s in response["alignd_samples"]] == [1.0, 1.0]


@pytest.mark.parametrize("field", ["model", "value_guidance"])
def test_an_id_with_a_nul_is_a_400_naming_it(url: str, writers: dict[str, str],
                                             headers: dict[str, str], field: str) -> None:
    body: dict[str, Any] = {"model": writers["nul"], "prompt": "1", "max_tokens": 1}
    if field == "model":
        body["model"] = "bytes-\x00"
    else:
        body["value_guidance"] = [{"model": "vm-\x00", "beta": 1.0}]
    response = httpx.post(f"{url}/v1/completions", json=body, headers=headers, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].startswith(field)


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_a_lone_surrogate_is_read_as_u_fffd(url: str, writers: dict[str, str],
                                            headers: dict[str, str], path: str) -> None:
    """A JSON ``\\ud800`` escape with no partner (a client's broken UTF-16) is no character a
    tokenizer can take: it is read as U+FFFD, as bytes that are not UTF-8 are."""
    text = "1+1=PLACE"
    body: dict[str, Any] = {"model": writers["nul"], "max_tokens": 2}
    if path == "/v1/completions":
        body["prompt"] = text
    else:
        body["messages"] = [{"role": "user", "content": text}]
    raw = json.dumps(body).replace("PLACE", "\\ud800")  # json.dumps writes no lone surrogate
    response = httpx.post(f"{url}{path}", content=raw, timeout=60,
                          headers={**headers, "Content-Type": "application/json"})
    assert response.status_code == 200, response.text
