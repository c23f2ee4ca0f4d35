"""Value Augmented Sampling and best-of-N on the torch engine."""

from __future__ import annotations

import string
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

from inference.vas import guided_logits
from services.web import ServerThread
from tests.inference.conftest import InferenceWorld, inference_settings

PROMPT = "47+8="


@pytest.fixture
def client(inference_url: str, inference_world: InferenceWorld) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{inference_url}/v1", api_key=inference_world.key,
                         max_retries=0)


def complete(client: openai.OpenAI, world: InferenceWorld, betas: list[float] | None = None,
             **body: Any) -> str:
    extra: dict[str, Any] = {"top_k": body.pop("top_k", 20)}
    if betas is not None:
        extra["value_guidance"] = [{"model": m, "beta": b} for m, b in zip(world.values, betas)]
    response = client.completions.create(model=world.base, prompt=PROMPT,
                                         max_tokens=body.pop("max_tokens", 16),
                                         extra_body=extra, **body)
    return response.choices[0].text


def test_the_guided_logits_follow_the_formula() -> None:
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, 3.0])
    candidate_ids = torch.tensor([4, 0, 1])
    values = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])  # (M=2, k=3)
    steered = guided_logits(logits, candidate_ids, values, torch.tensor([0.5, 2.0]))
    # value model 0 centred: [-2, -1, 3]; value model 1 centred: [-1, -1, 2]
    expected = [2.0 + 0.5 * -1 + 2 * -1, 1.0 + 0.5 * 3 + 2 * 2, float("-inf"), float("-inf"),
                3.0 + 0.5 * -2 + 2 * -1]
    assert steered.tolist() == expected


def test_beta_zero_is_plain_top_k_token_for_token(client: openai.OpenAI,
                                                  inference_world: InferenceWorld) -> None:
    for seed in (1, 2, 3):
        plain = complete(client, inference_world, None, seed=seed, top_k=5)
        assert complete(client, inference_world, [0.0, 0.0], seed=seed, top_k=5) == plain


def test_value_guidance_changes_what_is_sampled(client: openai.OpenAI,
                                                inference_world: InferenceWorld) -> None:
    plain = [complete(client, inference_world, None, seed=s) for s in range(4)]
    steered = [complete(client, inference_world, [8.0, 0.0], seed=s) for s in range(4)]
    assert plain != steered


def _reference_vas_greedy(world: InferenceWorld, betas: list[float], k: int, steps: int) -> str:
    """VAS by full forward passes without caches: the engine's cached path must agree."""
    tokenizer = AutoTokenizer.from_pretrained(world.base_path)
    base = AutoModelForCausalLM.from_pretrained(world.base_path).eval()
    values = [AutoModelForTokenClassification.from_pretrained(p).eval() for p in world.value_paths]
    ids = tokenizer(PROMPT)["input_ids"]
    out: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            prefix = torch.tensor([ids + out])  # (1, T)
            logits = base(prefix).logits[0, -1]  # (V,)
            candidate_ids = torch.topk(logits, k).indices  # (k,)
            rows = torch.cat([prefix.repeat(k, 1), candidate_ids.view(-1, 1)], dim=1)  # (k, T+1)
            scored = torch.stack([v(rows).logits[:, -1, 0] for v in values])  # (M, k)
            steered = guided_logits(logits, candidate_ids, scored, torch.tensor(betas))
            out.append(int(torch.argmax(steered)))
            if out[-1] == tokenizer.eos_token_id:
                break
    return str(tokenizer.decode(out, skip_special_tokens=True))


def test_cached_vas_equals_a_full_recompute_with_two_value_models(
        client: openai.OpenAI, inference_world: InferenceWorld) -> None:
    betas = [1.5, -0.7]
    expected = _reference_vas_greedy(inference_world, betas, k=6, steps=12)
    got = complete(client, inference_world, betas, temperature=0, top_k=6, max_tokens=12)
    assert got == expected


def test_a_value_model_with_another_tokenizer_is_refused(
        inference_url: str, inference_world: InferenceWorld) -> None:
    body = {"model": inference_world.base, "prompt": PROMPT,
            "value_guidance": [{"model": inference_world.foreign_value, "beta": 1.0}]}
    response = httpx.post(f"{inference_url}/v1/completions", json=body, timeout=30,
                          headers={"Authorization": f"Bearer {inference_world.key}"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "tokenizer_mismatch" and error["param"] == "value_guidance[0].model"
    assert "must share its tokenizer" in error["message"]


SIMILAR_TO_ANSWER = {"type": "text_similarity", "name": "close", "input": "{{sample.output_text}}",
                   "reference": "{{item.answer}}", "evaluation_metric": "fuzzy_match"}


def test_best_of_n_returns_the_highest_scoring_sample(client: openai.OpenAI,
                                                      inference_world: InferenceWorld) -> None:
    # Every printable character in order: an untrained model's samples share some with it
    # however the seed falls, and score by how many they hold in that order.
    answer = "".join(sorted(string.printable.strip()))
    body = {"best_of_n": {"n": 6, "reward": SIMILAR_TO_ANSWER, "item": {"answer": answer},
                          "return_all": True}}
    response = client.completions.create(model=inference_world.base, prompt=PROMPT,
                                         max_tokens=4, seed=9, temperature=1.5,
                                         extra_body=body)
    samples = response.model_extra["alignd_samples"]  # type: ignore[index]
    assert len(samples) == 6 and all(s["score"] is not None for s in samples)
    # Scored here too, by the formula itself (rapidfuzz's normalized Indel similarity): the
    # service's scores are the grader's, and the choice is the best of them.
    from rapidfuzz import fuzz

    own = [fuzz.ratio(sample["text"], answer) / 100.0 for sample in samples]
    assert [s["score"] for s in samples] == pytest.approx(own, abs=1e-9)
    assert len(set(own)) > 1, samples  # the samples differ, so the choice means something
    assert response.choices[0].text == samples[own.index(max(own))]["text"]
    assert response.usage is not None and response.usage.completion_tokens >= 6  # all n count


@pytest.fixture
def no_reward_server(database_url: str, dead_reward_url: str, inference_server: ServerThread,
                     inference_world: InferenceWorld) -> Iterator[str]:
    """A second inference app on the same engine, pointed at a reward service that is down."""
    from inference.main import create_app

    engine = inference_server.server.config.app.state.alignd.engine
    app = create_app(inference_settings(database_url, dead_reward_url), engine=engine)
    with ServerThread(app) as server:
        yield server.url


def test_best_of_n_with_the_reward_service_down_is_503(no_reward_server: str,
                                                       inference_world: InferenceWorld) -> None:
    body = {"model": inference_world.base, "prompt": PROMPT, "max_tokens": 3,
            "best_of_n": {"n": 2, "reward": SIMILAR_TO_ANSWER}}
    response = httpx.post(f"{no_reward_server}/v1/completions", json=body, timeout=30,
                          headers={"Authorization": f"Bearer {inference_world.key}"})
    assert response.status_code == 503
    assert "reward service" in response.json()["error"]["message"]


def test_a_bad_reward_spec_is_the_callers_400(client: openai.OpenAI,
                                              inference_world: InferenceWorld) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=inference_world.base, prompt=PROMPT, max_tokens=2,
                                  extra_body={"best_of_n": {"n": 2, "reward": {"type": "nope"}}})
    assert caught.value.body["param"].startswith("best_of_n.reward")  # type: ignore[index]
