"""/v1/score over real HTTP on loopback, against tiny real reward models registered in a real
PostgreSQL: scores equal the models' own forward passes, objectives and ensembles combine as
worked by hand, concurrent requests share batches without changing a score, errors name the
problem's JSON path, long items are truncated and flagged, normalisation and clipping."""

from __future__ import annotations

import asyncio
import random
import statistics
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

TOL = 1e-5


@cache
def _loaded(path: Path) -> tuple[Any, Any]:
    return (AutoTokenizer.from_pretrained(path),
            AutoModelForSequenceClassification.from_pretrained(path).eval())


def own_forward(path: Path, item: dict[str, Any]) -> list[float]:
    """The model's outputs for one item, alone (no padding), laid out as documented."""
    tokenizer, model = _loaded(path)
    if "messages" in item:
        text = tokenizer.apply_chat_template(item["messages"], tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = (tokenizer(item["prompt"])["input_ids"]
               + tokenizer(item["response"], add_special_tokens=False)["input_ids"]
               + [tokenizer.eos_token_id])
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0].tolist()


ITEMS = [
    {"prompt": "12+34=", "response": "46"},
    {"prompt": "What is 7*8? Answer briefly.", "response": "It is 56, I think."},
    {"prompt": "1+1=", "response": ""},
    {"messages": [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "4"}]},
]


def score(url: str, items: list[dict[str, Any]], reward: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}/v1/score", json={"items": items, "reward": reward}, timeout=60)


def test_single_model_scores_equal_its_own_forward(reward_url: str, reward_world: Any) -> None:
    response = score(reward_url, ITEMS, {"type": "reward_model", "model": reward_world.single})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["usage"]["tokens"] > 0
    path = reward_world.paths[reward_world.single]
    for i, (item, result) in enumerate(zip(ITEMS, body["data"], strict=True)):
        expected = own_forward(path, item)[0]
        assert result["index"] == i and result["error"] is None and not result["truncated"]
        assert result["score"] == pytest.approx(expected, abs=TOL)
        assert result["parts"] == {"reward": pytest.approx(expected, abs=TOL)}


def test_multi_objective_weighting(reward_url: str, reward_world: Any) -> None:
    path = reward_world.paths[reward_world.multi]
    expected = [own_forward(path, item) for item in ITEMS]
    default = score(reward_url, ITEMS, {"type": "reward_model", "model": reward_world.multi})
    explicit = score(reward_url, ITEMS, {"type": "reward_model", "model": reward_world.multi,
                                         "objective_weights": {"helpful": 2.0, "harmless": -1.0}})
    from_metadata = score(reward_url, ITEMS, {"type": "reward_model",
                                              "model": reward_world.multi_weighted})
    for (helpful, harmless), d, e, m in zip(expected, default.json()["data"],
                                            explicit.json()["data"], from_metadata.json()["data"],
                                            strict=True):
        assert d["parts"]["helpful"] == pytest.approx(helpful, abs=TOL)
        assert d["parts"]["harmless"] == pytest.approx(harmless, abs=TOL)
        assert d["score"] == pytest.approx(0.5 * helpful + 0.5 * harmless, abs=TOL)
        assert e["score"] == pytest.approx(2.0 * helpful - 1.0 * harmless, abs=TOL)
        assert m["score"] == pytest.approx(0.8 * helpful + 0.2 * harmless, abs=TOL)
    unknown = score(reward_url, ITEMS[:1], {"type": "reward_model", "model": reward_world.multi,
                                            "objective_weights": {"honest": 1.0}})
    assert unknown.status_code == 400
    assert unknown.json()["error"]["param"] == "reward.objective_weights.honest"


@pytest.mark.parametrize("aggregation", ["mean", "min", "uwo"])
def test_ensemble_of_listed_models(reward_url: str, reward_world: Any, aggregation: str) -> None:
    spec = {"type": "ensemble", "models": reward_world.members, "aggregation": aggregation,
            "uwo_lambda": 0.5}
    response = score(reward_url, ITEMS, spec)
    assert response.status_code == 200, response.text
    for item, result in zip(ITEMS, response.json()["data"], strict=True):
        members = [own_forward(reward_world.paths[m], item)[0] for m in reward_world.members]
        assert result["parts"] == {m: pytest.approx(r, abs=TOL)
                                   for m, r in zip(reward_world.members, members, strict=True)}
        mean = sum(members) / 3
        by_hand = {"mean": mean, "min": min(members),
                   "uwo": mean - 0.5 * sum((r - mean) ** 2 for r in members) / 3}
        assert result["score"] == pytest.approx(by_hand[aggregation], abs=TOL)


def test_registered_ensemble_scores_its_members(reward_url: str, reward_world: Any) -> None:
    response = score(reward_url, ITEMS, {"type": "ensemble", "model": reward_world.ensemble,
                                         "aggregation": "min"})
    assert response.status_code == 200, response.text
    for item, result in zip(ITEMS, response.json()["data"], strict=True):
        members = [own_forward(reward_world.paths[m], item)[0] for m in reward_world.members]
        assert list(result["parts"]) == ["member-0", "member-1", "member-2"]
        assert list(result["parts"].values()) == pytest.approx(members, abs=TOL)
        assert result["score"] == pytest.approx(min(members), abs=TOL)


def _random_item(rng: random.Random) -> dict[str, Any]:
    a, b = rng.randrange(1000), rng.randrange(1000)
    context = " ".join(f"{rng.randrange(99)}+{rng.randrange(99)}" for _ in range(rng.randrange(8)))
    return {"prompt": f"{context} {a}+{b}=", "response": str(a + b)[: rng.randrange(5)]}


def score_at_once(url: str, spec: dict[str, Any], requests: list[list[dict[str, str]]]
                  ) -> list[dict[str, Any]]:
    """Every request's items posted at once, so the service batches them; bodies in order."""
    async def all_at_once() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            responses = await asyncio.gather(*(
                http.post("/v1/score", json={"items": items, "reward": spec})
                for items in requests))
        return [r.json() for r in responses]

    return asyncio.run(all_at_once())


def test_concurrent_requests_batch_without_changing_scores(reward_url: str,
                                                           reward_world: Any) -> None:
    rng = random.Random(0)
    requests = [[_random_item(rng) for _ in range(rng.randrange(1, 4))] for _ in range(32)]
    spec = {"type": "reward_model", "model": reward_world.single}

    before = _batch_rows(reward_url)
    bodies = score_at_once(reward_url, spec, requests)
    after = _batch_rows(reward_url)
    path = reward_world.paths[reward_world.single]
    for items, body in zip(requests, bodies, strict=True):
        for item, result in zip(items, body["data"], strict=True):
            assert result["score"] == pytest.approx(own_forward(path, item)[0], abs=TOL)
    passes, rows = after[0] - before[0], after[1] - before[1]
    assert rows == sum(len(items) for items in requests)
    assert passes < rows / 2, f"{rows} rows took {passes} forward passes: nothing was batched"


def _batch_rows(url: str) -> tuple[float, float]:
    """(forward passes, rows) so far, from /metrics."""
    text = httpx.get(f"{url}/metrics").text
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith("alignd_reward_batch_rows_")}
    return values.get("alignd_reward_batch_rows_count", 0.0), values.get(
        "alignd_reward_batch_rows_sum", 0.0)


def test_unknown_model_is_a_404_naming_it(reward_url: str, reward_world: Any) -> None:
    response = score(reward_url, ITEMS[:1], {"type": "reward_model", "model": "no-such-rm"})
    assert response.status_code == 404
    error = response.json()["error"]
    assert "no-such-rm" in error["message"] and error["param"] == "reward.model"
    response = score(reward_url, ITEMS[:1], {"type": "ensemble",
                                             "models": [reward_world.single, "ghost"]})
    assert response.status_code == 404
    assert response.json()["error"]["param"] == "reward.models.1"


@pytest.mark.parametrize(("reward", "param"), [
    ({"type": "nope"}, "reward.type"),
    ({"model": "x"}, "reward.type"),
    ({"type": "reward_model"}, "reward.model"),
    ({"type": "reward_model", "model": "x", "temperature": 1}, "reward.temperature"),
    ({"type": "reward_model", "model": "x", "objective_weights": {"a": "heavy"}},
     "reward.objective_weights.a"),
    ({"type": "ensemble", "models": ["a"]}, "reward.models"),
    ({"type": "ensemble", "models": ["a", "b"], "aggregation": "median"}, "reward.aggregation"),
    ({"type": "ensemble", "models": ["a", "b"], "aggregation": "uwo"}, "reward"),
    ({"type": "reward_model", "model": "x", "clip": [1, -1]}, "reward"),
    ({"type": "reward_model", "model": "x", "normalize": {"type": "batch"}},
     "reward.normalize.type"),
])
def test_malformed_spec_is_a_400_with_its_path(reward_url: str, reward: dict[str, Any],
                                              param: str) -> None:
    response = score(reward_url, ITEMS[:1], reward)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert error["message"]


def test_malformed_items_are_a_400_with_their_path(reward_url: str, reward_world: Any) -> None:
    spec = {"type": "reward_model", "model": reward_world.single}
    no_response = score(reward_url, [ITEMS[0], {"prompt": "hi"}], spec)
    assert no_response.status_code == 400 and no_response.json()["error"]["param"] == "items.1"
    user_last = score(reward_url, [{"messages": [{"role": "user", "content": "x"}]}], spec)
    assert user_last.status_code == 400 and "assistant" in user_last.json()["error"]["message"]
    wrong_kind = score(reward_url, ITEMS[:1], {"type": "reward_model",
                                               "model": reward_world.ensemble})
    assert wrong_kind.status_code == 400
    assert wrong_kind.json()["error"]["code"] == "not_a_reward_model"


def test_long_items_are_truncated_and_flagged(reward_url: str, reward_world: Any) -> None:
    long_prompt = " ".join(f"{i}+{i}={2 * i}" for i in range(60))  # ~600 chars > 256 positions
    long_item = {"prompt": long_prompt, "response": "the answer is " + "9" * 200}
    response = score(reward_url, [long_item, ITEMS[0]],
                     {"type": "reward_model", "model": reward_world.single})
    assert response.status_code == 200, response.text
    cut, whole = response.json()["data"]
    assert cut["truncated"] and not whole["truncated"]
    path = reward_world.paths[reward_world.single]
    tokenizer, model = _loaded(path)
    prompt = tokenizer(long_item["prompt"])["input_ids"]
    answer = tokenizer(long_item["response"], add_special_tokens=False)["input_ids"]
    limit = model.config.max_position_embeddings  # 256, below the service's default limit
    kept = [prompt[0], *prompt[len(prompt) - (limit // 2 - 1):], *answer[: limit - limit // 2]]
    assert len(kept) == limit
    with torch.inference_mode():
        expected = model(input_ids=torch.tensor([kept])).logits[0, 0].item()
    assert cut["score"] == pytest.approx(expected, abs=TOL)


def test_running_normalization_and_clipping(reward_url: str, reward_world: Any) -> None:
    spec = {"type": "reward_model", "model": reward_world.single}
    raw = [r["score"] for r in score(reward_url, ITEMS, spec).json()["data"]]
    key = f"test-{random.random()}"
    normalized_spec = {**spec, "normalize": {"type": "running", "key": key}}
    first = [r["score"] for r in score(reward_url, ITEMS, normalized_spec).json()["data"]]
    mean, std = statistics.fmean(raw), statistics.pstdev(raw)
    assert first == pytest.approx([(r - mean) / std for r in raw], abs=1e-4)
    second = [r["score"] for r in score(reward_url, ITEMS[:2], normalized_spec).json()["data"]]
    seen = raw + raw[:2]
    mean, std = statistics.fmean(seen), statistics.pstdev(seen)
    assert second == pytest.approx([(r - mean) / std for r in raw[:2]], abs=1e-4)
    lo, hi = sorted(raw)[1], sorted(raw)[2]
    clipped = score(reward_url, ITEMS, {**spec, "clip": [lo, hi]}).json()["data"]
    assert [r["score"] for r in clipped] == pytest.approx([min(max(r, lo), hi) for r in raw],
                                                           abs=TOL)
    assert [r["parts"]["reward"] for r in clipped] == pytest.approx(raw, abs=TOL)


def test_reward_models_are_listed(reward_url: str, reward_world: Any) -> None:
    body = httpx.get(f"{reward_url}/v1/reward_models").json()
    kinds = {model["id"]: model["kind"] for model in body["data"]}
    assert kinds[reward_world.single] == "reward_model"
    assert kinds[reward_world.ensemble] == "reward_ensemble"
    multi = next(m for m in body["data"] if m["id"] == reward_world.multi)
    assert multi["objectives"] == ["helpful", "harmless"]


def test_readiness_checks_the_database_and_metrics_count_requests(reward_url: str) -> None:
    ready = httpx.get(f"{reward_url}/readyz").json()
    assert ready == {"status": "ok", "checks": {"database": "ok"}}
    metrics = httpx.get(f"{reward_url}/metrics").text
    assert 'alignd_reward_requests_total{outcome="ok",type="reward_model"}' in metrics
    assert "alignd_reward_forward_seconds_bucket" in metrics
