"""Implicit (log-probability) reward models through /v1/score over real HTTP on loopback: a score
is β·Σ log π(y_t | x, y_<t) over the response's tokens (less the reference's), as a plain loop
over the item alone computes it; concurrent requests share forward passes without changing a
score; a long item keeps its response's start and scores the tokens kept."""

from __future__ import annotations

import random
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from modeling.heads import read_head
from tests.reward_service.test_scoring import (
    ITEMS,
    _batch_rows,
    _random_item,
    score,
    score_at_once,
)

TOL = 1e-4


@cache
def _loaded(path: Path) -> tuple[Any, Any]:
    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()


def item_ids(path: Path, item: dict[str, Any]) -> tuple[list[int], int]:
    """The item's token ids, laid out as documented, and where its response starts."""
    tokenizer, _ = _loaded(path)
    if "messages" in item:
        prompt = tokenizer.apply_chat_template(item["messages"][:-1], tokenize=False,
                                               add_generation_prompt=True)
        whole = tokenizer.apply_chat_template(item["messages"], tokenize=False)
        ids = tokenizer(whole, add_special_tokens=False)["input_ids"]
        return ids, len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    prompt_ids = tokenizer(item["prompt"])["input_ids"]
    response_ids = tokenizer(item["response"], add_special_tokens=False)["input_ids"]
    return prompt_ids + response_ids + [tokenizer.eos_token_id], len(prompt_ids)


def own_logp(path: Path, ids: list[int], start: int) -> float:
    """Σ log π(ids[t] | ids[:t]) for t from `start`, the model reading the ids alone."""
    _, model = _loaded(path)
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()  # (T, V)
    return sum(torch.log_softmax(logits[t - 1], dim=-1)[ids[t]].item()
               for t in range(max(start, 1), len(ids)))


def expected_reward(world: Any, model_id: str, item: dict[str, Any]) -> float:
    """β·(Σ log π − Σ log π_ref) of the test models: beta 0.5 without, 2.0 with the base."""
    path = world.paths[model_id]
    ids, start = item_ids(path, item)
    if model_id == world.implicit:
        return 0.5 * own_logp(path, ids, start)
    return 2.0 * (own_logp(path, ids, start) - own_logp(_reference(path), ids, start))


def _reference(path: Path) -> Path:
    head = read_head(path)
    assert head is not None and head.reference is not None
    return Path(head.reference.path)


@pytest.mark.parametrize("which, passes", [("implicit", 1), ("implicit_ref", 2)])
def test_scores_are_beta_times_response_log_probs(reward_url: str, reward_world: Any,
                                                  which: str, passes: int) -> None:
    model_id = getattr(reward_world, which)
    response = score(reward_url, ITEMS, {"type": "reward_model", "model": model_id})
    assert response.status_code == 200, response.text
    body = response.json()
    path = reward_world.paths[model_id]
    assert body["usage"]["tokens"] == passes * sum(len(item_ids(path, i)[0]) for i in ITEMS)
    for item, result in zip(ITEMS, body["data"], strict=True):
        expected = expected_reward(reward_world, model_id, item)
        assert result["error"] is None and not result["truncated"]
        assert result["score"] == pytest.approx(expected, abs=TOL)
        assert result["parts"] == {"reward": pytest.approx(expected, abs=TOL)}


def test_concurrent_requests_score_as_each_item_alone(reward_url: str, reward_world: Any) -> None:
    rng = random.Random(1)
    requests = [[_random_item(rng) for _ in range(rng.randrange(1, 4))] for _ in range(24)]
    spec = {"type": "reward_model", "model": reward_world.implicit_ref}

    before = _batch_rows(reward_url)
    bodies = score_at_once(reward_url, spec, requests)
    after = _batch_rows(reward_url)
    for items, body in zip(requests, bodies, strict=True):
        for item, result in zip(items, body["data"], strict=True):
            alone = score(reward_url, [item], spec).json()["data"][0]["score"]
            assert result["score"] == pytest.approx(alone, abs=TOL)
    passes, rows = after[0] - before[0], after[1] - before[1]
    assert rows == 2 * sum(len(items) for items in requests)  # the policy's and the reference's
    assert passes < rows / 2, f"{rows} rows took {passes} forward passes: nothing was batched"


def test_long_items_keep_the_response_start_and_score_the_tokens_kept(
    reward_url: str, reward_world: Any
) -> None:
    long_prompt = " ".join(f"{i}+{i}={2 * i}" for i in range(60))  # ~600 chars > 256 positions
    long_item = {"prompt": long_prompt, "response": "the answer is " + "9" * 200}
    response = score(reward_url, [long_item],
                     {"type": "reward_model", "model": reward_world.implicit})
    assert response.status_code == 200, response.text
    (cut,) = response.json()["data"]
    assert cut["truncated"]
    path = reward_world.paths[reward_world.implicit]
    ids, start = item_ids(path, long_item)
    limit = 256  # the tiny model's max_position_embeddings
    kept_prompt = [ids[0], *ids[start - (limit // 2 - 1):start]]
    kept = kept_prompt + ids[start:start + limit - limit // 2]
    assert len(kept) == limit
    expected = 0.5 * own_logp(path, kept, len(kept_prompt))
    assert cut["score"] == pytest.approx(expected, abs=TOL)


def test_an_ensemble_may_mix_heads(reward_url: str, reward_world: Any) -> None:
    members = [reward_world.single, reward_world.implicit]
    response = score(reward_url, ITEMS[:2], {"type": "ensemble", "models": members})
    assert response.status_code == 200, response.text
    for item, result in zip(ITEMS[:2], response.json()["data"], strict=True):
        implicit = expected_reward(reward_world, reward_world.implicit, item)
        assert result["parts"][reward_world.implicit] == pytest.approx(implicit, abs=TOL)
        assert result["score"] == pytest.approx(
            (result["parts"][reward_world.single] + implicit) / 2, abs=TOL)


def test_listed_reward_models_say_their_head(reward_url: str, reward_world: Any) -> None:
    listed = {m["id"]: m for m in httpx.get(f"{reward_url}/v1/reward_models").json()["data"]}
    assert listed[reward_world.implicit]["head"] == "implicit"
    assert listed[reward_world.single]["head"] is None  # registered without the job's metadata
