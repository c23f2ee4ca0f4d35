"""Bad requests: a 4xx with the error envelope naming the field and the allowed range."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.inference.conftest import InferenceWorld


def post(url: str, key: str | None, body: dict[str, Any],
         path: str = "/v1/completions") -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{url}{path}", json=body, headers=headers, timeout=30)


def error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return response.json()["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(("field", "value", "words"), [
    ("temperature", 3.0, "less than or equal to 2"),
    ("top_p", 1.3, "less than or equal to 1"),
    ("top_p", 0, "greater than 0"),
    ("top_k", -5, "greater than or equal to -1"),
    ("n", 0, "greater than or equal to 1"),
    ("max_tokens", 0, "greater than or equal to 1"),
    ("logprobs", 50, "less than or equal to 20"),
    ("stop", [""], "must not be empty"),
    ("frequency_penalty", 1.0, "not supported"),
    ("bogus", 1, "unknown field"),
])
def test_bad_sampling_values_name_the_range(inference_url: str, inference_world: InferenceWorld,
                                            field: str, value: Any, words: str) -> None:
    body = {"model": inference_world.base, "prompt": "1+1=", field: value}
    err = error(post(inference_url, inference_world.key, body), 400)
    assert words in err["message"] and err["type"] == "invalid_request_error"
    if field != "frequency_penalty":
        assert err["param"] == field


def test_max_tokens_past_the_context_names_the_limit(inference_url: str,
                                                     inference_world: InferenceWorld) -> None:
    body = {"model": inference_world.base, "prompt": "1+1=", "max_tokens": 100_000}
    err = error(post(inference_url, inference_world.key, body), 400)
    assert err["param"] == "max_tokens" and err["code"] == "context_length_exceeded"
    assert "at most 251" in err["message"] and "got 100000" in err["message"]


def test_an_over_long_prompt_is_refused(inference_url: str,
                                        inference_world: InferenceWorld) -> None:
    body = {"model": inference_world.base, "prompt": "1" * 400, "max_tokens": 1}
    err = error(post(inference_url, inference_world.key, body), 400)
    assert err["param"] == "prompt" and "256 tokens" in err["message"]
    chat = {"model": inference_world.base, "messages": [{"role": "user", "content": "1" * 400}]}
    err = error(post(inference_url, inference_world.key, chat, "/v1/chat/completions"), 400)
    assert err["param"] == "messages"


def test_unknown_models_and_wrong_kinds(inference_url: str,
                                        inference_world: InferenceWorld) -> None:
    err = error(post(inference_url, inference_world.key,
                     {"model": "no-such-model", "prompt": "x"}), 404)
    assert err["code"] == "model_not_found" and "no-such-model" in err["message"]
    err = error(post(inference_url, inference_world.key,
                     {"model": inference_world.values[0], "prompt": "x"}), 400)
    assert "value_model" in err["message"]
    guided = {"model": inference_world.base, "prompt": "x",
              "value_guidance": [{"model": inference_world.adapter, "beta": 1.0}]}
    err = error(post(inference_url, inference_world.key, guided), 400)
    assert err["param"] == "value_guidance[0].model"


def test_missing_or_wrong_keys_are_401(inference_url: str,
                                       inference_world: InferenceWorld) -> None:
    body = {"model": inference_world.base, "prompt": "1+1="}
    assert error(post(inference_url, None, body), 401)["code"] == "missing_api_key"
    assert error(post(inference_url, "sk-alignd-nope", body), 401)["code"] == "invalid_api_key"
    response = httpx.get(f"{inference_url}/v1/models", timeout=10)
    assert response.status_code == 401


def test_malformed_bodies(inference_url: str, inference_world: InferenceWorld) -> None:
    no_prompt = error(post(inference_url, inference_world.key, {"model": inference_world.base}),
                      400)
    assert no_prompt["param"] == "prompt"
    bad_ids = {"model": inference_world.base, "prompt": [1, 2, 10_000]}
    assert "token ids" in error(post(inference_url, inference_world.key, bad_ids), 400)["message"]
    best_stream = {"model": inference_world.base, "prompt": "x", "stream": True,
                   "best_of_n": {"n": 2, "reward": {"type": "string_check"}}}
    assert "cannot stream" in error(post(inference_url, inference_world.key, best_stream),
                                    400)["message"]


@pytest.mark.parametrize("role", ["tool", "developer"])
def test_a_role_the_chat_template_has_no_place_for_is_a_400(
        inference_url: str, inference_world: InferenceWorld, role: str) -> None:
    """The schema accepts OpenAI's roles; the demo model's template knows system, user and
    assistant only, and raises for the others (a 500 before)."""
    chat = {"model": inference_world.base, "max_tokens": 2,
            "messages": [{"role": "user", "content": "1+1="}, {"role": role, "content": "x"}]}
    err = error(post(inference_url, inference_world.key, chat, "/v1/chat/completions"), 400)
    assert err["param"] == "messages"
    assert "chat template refused" in err["message"] and role in err["message"]


def test_prompts_times_n_is_bounded(inference_url: str, inference_world: InferenceWorld) -> None:
    """50 prompts x n 64 = 3,200 sequences was accepted; past the setting (256) it is a 400."""
    body = {"model": inference_world.base, "prompt": ["1+1="] * 50, "n": 64, "max_tokens": 1}
    err = error(post(inference_url, inference_world.key, body), 400)
    assert err["param"] == "n" and err["code"] == "too_many_sequences"
    assert "3200 sequences" in err["message"] and "at most 256" in err["message"]
    fits = {**body, "prompt": ["1+1="] * 4}  # 256 exactly
    assert post(inference_url, inference_world.key, fits).status_code == 200


def test_ignore_eos_runs_to_max_tokens_on_every_engine(inference_url: str,
                                                       inference_world: InferenceWorld) -> None:
    """alignd's vLLM engine stopped at the model's eos with "stop" (vLLM's own eos check),
    where the torch engine and vLLM's own server ran to max_tokens with "length"."""
    body = {"model": inference_world.base, "prompt": "1+1=", "max_tokens": 48, "n": 24,
            "temperature": 1.0, "seed": 7}
    stopping = post(inference_url, inference_world.key, body).json()["choices"]
    assert "stop" in {c["finish_reason"] for c in stopping}  # some do sample the eos
    response = post(inference_url, inference_world.key, {**body, "ignore_eos": True})
    assert response.status_code == 200, response.text
    assert {c["finish_reason"] for c in response.json()["choices"]} == {"length"}
    assert response.json()["usage"]["completion_tokens"] == 24 * 48


def test_min_tokens_holds_off_every_stop_token_on_every_engine(
        inference_url: str, inference_world: InferenceWorld) -> None:
    body = {"model": inference_world.base, "prompt": "1+1=", "max_tokens": 40, "n": 16,
            "temperature": 1.0, "seed": 7, "logprobs": 0}
    free = post(inference_url, inference_world.key, body).json()["choices"]
    assert min(len(c["logprobs"]["tokens"]) for c in free) < 32  # some stop early by themselves
    held = post(inference_url, inference_world.key, {**body, "min_tokens": 32})
    assert held.status_code == 200, held.text
    assert min(len(c["logprobs"]["tokens"]) for c in held.json()["choices"]) >= 32
    too_many = post(inference_url, inference_world.key, {**body, "min_tokens": 41})
    assert error(too_many, 400)["param"] == "min_tokens"


def test_stop_token_ids_end_a_choice_on_every_engine(inference_url: str,
                                                     inference_world: InferenceWorld) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(inference_world.base_path)
    body = {"model": inference_world.base, "prompt": "1+1=", "max_tokens": 12,
            "temperature": 0, "ignore_eos": True, "logprobs": 0}
    free = post(inference_url, inference_world.key, body).json()["choices"][0]
    tokens = free["logprobs"]["tokens"]
    stop_id = tokenizer.convert_tokens_to_ids(tokens[3])  # the 4th greedy token
    first = next(i for i, t in enumerate(tokens) if tokenizer.convert_tokens_to_ids(t) == stop_id)
    stopped = post(inference_url, inference_world.key, {**body, "stop_token_ids": [stop_id]})
    assert stopped.status_code == 200, stopped.text
    choice = stopped.json()["choices"][0]
    assert choice["finish_reason"] == "stop"  # ignore_eos leaves stop_token_ids in force
    assert choice["logprobs"]["tokens"] == tokens[: first + 1]
    bad = post(inference_url, inference_world.key, {**body, "stop_token_ids": [10**6]})
    assert error(bad, 400)["param"] == "stop_token_ids"
