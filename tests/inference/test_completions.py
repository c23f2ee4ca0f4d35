"""The OpenAI-compatible endpoints on the torch engine, driven with the official client."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.web import ServerThread
from tests.inference.conftest import InferenceWorld, inference_settings

PROMPT = "12+34="


@pytest.fixture
def client(inference_url: str, inference_world: InferenceWorld) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{inference_url}/v1", api_key=inference_world.key,
                         max_retries=0)


def test_greedy_completion_equals_transformers_greedy_generate(
        client: openai.OpenAI, inference_world: InferenceWorld) -> None:
    tokenizer = AutoTokenizer.from_pretrained(inference_world.base_path)
    model = AutoModelForCausalLM.from_pretrained(inference_world.base_path)
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None,
                             attention_mask=torch.ones_like(ids))
    expected = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    response = client.completions.create(model=inference_world.base, prompt=PROMPT,
                                         max_tokens=12, temperature=0)
    choice = response.choices[0]
    assert choice.text == expected
    assert response.usage is not None
    assert response.usage.prompt_tokens == ids.shape[1]
    if choice.finish_reason == "length":
        assert response.usage.completion_tokens == 12


def test_a_seed_fixes_the_sample_and_n_gives_distinct_choices(
        client: openai.OpenAI, inference_world: InferenceWorld) -> None:
    def sample(seed: int, n: int = 1) -> list[str]:
        response = client.completions.create(model=inference_world.base, prompt=PROMPT,
                                             max_tokens=20, temperature=1.0, seed=seed, n=n)
        return [c.text for c in sorted(response.choices, key=lambda c: c.index)]

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)
    three = sample(7, n=3)
    assert len(three) == 3 and three[0] == sample(7)[0] and len(set(three)) > 1


def test_concurrent_requests_batch_without_changing_any_result(
        client: openai.OpenAI, inference_world: InferenceWorld) -> None:
    """Continuous batching: rows join and leave a shared KV cache; each result is what the
    request gets alone."""
    prompts = ["1+1=", "73-45=", "999*9=", "5=", "12+34=", "60-6="]
    alone = [client.completions.create(model=inference_world.base, prompt=p, seed=i,
                                       max_tokens=5 + 3 * i).choices[0].text
             for i, p in enumerate(prompts)]

    async def together() -> list[str]:
        async_client = openai.AsyncOpenAI(base_url=str(client.base_url), api_key=client.api_key)
        responses = await asyncio.gather(*[
            async_client.completions.create(model=inference_world.base, prompt=p, seed=i,
                                            max_tokens=5 + 3 * i)
            for i, p in enumerate(prompts)])
        await async_client.close()
        return [r.choices[0].text for r in responses]

    assert asyncio.run(together()) == alone


def test_streaming_completion_matches_the_whole_answer(
        client: openai.OpenAI, inference_world: InferenceWorld) -> None:
    whole = client.completions.create(model=inference_world.base, prompt=PROMPT, max_tokens=15,
                                      seed=3)
    chunks = list(client.completions.create(model=inference_world.base, prompt=PROMPT,
                                            max_tokens=15, seed=3, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason and set(finishes[:-1]) == {None}
    assert chunks[-1].usage is not None and chunks[-1].usage == whole.usage


def test_a_stream_interval_groups_tokens_after_the_first(
        database_url: str, grader_reward_url: str, inference_world: InferenceWorld) -> None:
    from inference.main import create_app

    settings = inference_settings(database_url, grader_reward_url, engine="torch",
                                  stream_interval=4)
    body = {"model": inference_world.base, "prompt": PROMPT, "max_tokens": 15, "seed": 2,
            "ignore_eos": True, "logprobs": 0}
    headers = {"Authorization": f"Bearer {inference_world.key}"}
    with ServerThread(create_app(settings)) as server:
        whole = httpx.post(f"{server.url}/v1/completions", json=body, headers=headers,
                           timeout=30).json()["choices"][0]
        with httpx.stream("POST", f"{server.url}/v1/completions", json={**body, "stream": True},
                          headers=headers, timeout=30) as response:
            events = [json.loads(line[6:]) for line in response.iter_lines()
                      if line.startswith("data: {")]
    # The first event goes out at once; tokens that piled up meanwhile go with it.
    sizes = [len(event["choices"][0]["logprobs"]["tokens"]) for event in events]
    assert all(size >= 4 for size in sizes[1:-1]) and sum(sizes) == 15 and len(sizes) <= 5
    assert "".join(event["choices"][0]["text"] for event in events) == whole["text"]
    assert [e["choices"][0]["finish_reason"] for e in events][-1] == "length"


def test_the_stream_ends_with_done(inference_url: str, inference_world: InferenceWorld) -> None:
    body = {"model": inference_world.base, "prompt": PROMPT, "max_tokens": 4, "stream": True}
    headers = {"Authorization": f"Bearer {inference_world.key}"}
    with httpx.stream("POST", f"{inference_url}/v1/completions", json=body, headers=headers,
                      timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)


def test_chat_completion_and_its_stream(client: openai.OpenAI,
                                        inference_world: InferenceWorld) -> None:
    messages = [{"role": "user", "content": "2+2="}]
    whole = client.chat.completions.create(model=inference_world.base, messages=messages,
                                           max_tokens=10, seed=5)
    assert whole.object == "chat.completion"
    assert whole.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(model=inference_world.base, messages=messages,
                                            max_tokens=10, seed=5, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_logprobs_on_both_endpoints(client: openai.OpenAI,
                                    inference_world: InferenceWorld) -> None:
    response = client.completions.create(model=inference_world.base, prompt=PROMPT,
                                         max_tokens=6, logprobs=3, seed=1,
                                         extra_body={"min_tokens": 6})
    logprobs = response.choices[0].logprobs
    assert logprobs is not None and len(logprobs.tokens) == 6
    assert "".join(logprobs.tokens) == response.choices[0].text
    assert all(lp <= 0 for lp in logprobs.token_logprobs)
    assert all(len(top) == 3 for top in logprobs.top_logprobs)
    chat = client.chat.completions.create(model=inference_world.base, max_tokens=4, seed=1,
                                          messages=[{"role": "user", "content": "1+1="}],
                                          logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens
    assert all(len(entry.top_logprobs) == 2 and entry.logprob <= 0 for entry in content)


def test_a_stop_string_ends_the_text_before_it(client: openai.OpenAI,
                                               inference_world: InferenceWorld) -> None:
    free = client.completions.create(model=inference_world.base, prompt=PROMPT, max_tokens=40,
                                     seed=11).choices[0].text
    stop = free[5:7]  # a string the sampled text is known to contain
    cut = client.completions.create(model=inference_world.base, prompt=PROMPT, max_tokens=40,
                                    seed=11, stop=[stop])
    assert cut.choices[0].text == free[: free.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model=inference_world.base, prompt=PROMPT,
                                         max_tokens=40, seed=11, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == cut.choices[0].text


def test_a_lora_adapter_is_served_over_its_base(client: openai.OpenAI,
                                                inference_world: InferenceWorld) -> None:
    def greedy(model: str) -> str:
        return client.completions.create(model=model, prompt=PROMPT, max_tokens=12,
                                         temperature=0).choices[0].text

    base_before = greedy(inference_world.base)
    tuned = greedy(inference_world.adapter)
    assert tuned != base_before
    assert greedy(inference_world.base) == base_before  # the adapter is off for the base


def test_a_lora_adapter_serves_what_peft_generates(client: openai.OpenAI,
                                                   inference_world: InferenceWorld) -> None:
    """Token for token with PEFT's own greedy decode of the same adapter, on both engines."""
    from peft import PeftModel

    tokenizer = AutoTokenizer.from_pretrained(inference_world.base_path)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(inference_world.base_path),
        inference_world.adapter_path).eval()
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=16, do_sample=False,
                             eos_token_id=None, attention_mask=torch.ones_like(ids))
    expected = out[0, ids.shape[1]:].tolist()
    response = client.completions.create(model=inference_world.adapter, prompt=PROMPT,
                                         max_tokens=16, temperature=0, logprobs=0,
                                         extra_body={"ignore_eos": True})
    choice = response.choices[0]
    assert choice.text == tokenizer.decode(expected, skip_special_tokens=True)
    assert choice.logprobs is not None
    assert choice.logprobs.tokens == [tokenizer.decode([t]) for t in expected]  # each token


def test_models_lists_what_the_project_sees(client: openai.OpenAI,
                                            inference_world: InferenceWorld,
                                            inference_url: str) -> None:
    ids = {m.id for m in client.models.list()}
    assert {inference_world.base, inference_world.adapter, *inference_world.values} <= ids
    other = openai.OpenAI(base_url=f"{inference_url}/v1", api_key=inference_world.other_key)
    other_ids = {m.id for m in other.models.list()}
    assert inference_world.base in other_ids and inference_world.adapter not in other_ids
    with pytest.raises(openai.NotFoundError):
        other.completions.create(model=inference_world.adapter, prompt=PROMPT, max_tokens=2)


def test_a_client_that_goes_away_mid_stream_frees_its_slot(
        inference_url: str, inference_world: InferenceWorld, inference_server) -> None:  # type: ignore[no-untyped-def]
    engine = inference_server.server.config.app.state.alignd.engine
    # ignore_eos: the sequence runs its 200 tokens unless the client leaves (the first event
    # may carry several tokens, and one of them could otherwise be an eos).
    body = {"model": inference_world.base, "prompt": PROMPT, "max_tokens": 200, "stream": True,
            "ignore_eos": True}
    headers = {"Authorization": f"Bearer {inference_world.key}"}
    with httpx.stream("POST", f"{inference_url}/v1/completions", json=body, headers=headers,
                      timeout=30) as response:
        lines = response.iter_lines()
        next(lines)
        assert engine.running() == 1
    from tests.conftest import wait_for

    wait_for(lambda: engine.running() == 0, timeout=10, message="the slot to be freed")


def test_metrics_count_requests_and_tokens(client: openai.OpenAI, inference_url: str,
                                           inference_world: InferenceWorld) -> None:
    client.completions.create(model=inference_world.base, prompt=PROMPT, max_tokens=3, seed=0,
                              extra_body={"ignore_eos": True})
    text = httpx.get(f"{inference_url}/metrics", timeout=10).text
    assert 'alignd_inference_requests_total{endpoint="completions",status="200"}' in text
    generated = next(float(line.split()[-1]) for line in text.splitlines()
                     if line.startswith("alignd_inference_generated_tokens_total "))
    assert generated >= 3
    assert "alignd_inference_queue_depth" in text and "alignd_inference_running_sequences" in text
