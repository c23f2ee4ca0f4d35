"""Rollouts sampled through the inference service's torch engine (`trainer.online.sampler`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from inference.local import LocalGenerator
from trainer.online.sampler import (
    Completion,
    RolloutOptions,
    Sampler,
    sample_completions,
    stop_token_ids,
)


def config(**overrides: float) -> RolloutOptions:
    settings = {"samples_per_prompt": 3, "max_new_tokens": 12, "temperature": 1.0, "top_k": 0,
                "seed": 5, **overrides}
    return RolloutOptions(**settings)  # type: ignore[arg-type]


def without_logprobs(completion: Completion) -> tuple:
    return completion.prompt, completion.token_ids, completion.text, completion.finished


def test_completions_come_in_prompt_order_and_do_not_depend_on_the_batch_size(
        tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = [tokenizer(text)["input_ids"] for text in ("1+2=", "34-5=", "7*8=")]
    small = sample_completions(tiny_model_dir, tokenizer, prompts, config(), batch_size=2)
    large = sample_completions(tiny_model_dir, tokenizer, prompts, config(), batch_size=9)
    assert [without_logprobs(c) for c in small] == [without_logprobs(c) for c in large]
    for one, other in zip(small, large):
        assert one.logprobs == pytest.approx(other.logprobs, abs=1e-5)
    assert [c.prompt for c in small] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    stops = set(stop_token_ids(tiny_model_dir, tokenizer))
    for completion in small:
        assert 1 <= len(completion.token_ids) <= 12
        assert completion.finished == (completion.token_ids[-1] in stops)
        assert not stops & set(completion.token_ids[:-1])  # cut at the first stop token
        assert completion.text == tokenizer.decode(completion.token_ids, skip_special_tokens=True)
    assert len({tuple(c.token_ids) for c in small}) > 1  # the sequences drew different samples
    other_seed = sample_completions(tiny_model_dir, tokenizer, prompts, config(seed=6),
                                     batch_size=4)
    assert [c.token_ids for c in other_seed] != [c.token_ids for c in small]


def test_a_live_model_is_sampled_from_its_current_weights_without_saving_them(
        tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = [tokenizer(text)["input_ids"] for text in ("1+2=", "34-5=")]
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    policy.train()
    sampler = Sampler(tiny_model_dir, tokenizer, LocalGenerator(max_batch_size=4),
                      live_model=policy)
    try:
        before = sampler.sample(prompts, config())
        assert policy.training  # given back in the mode it was in
        from_disk = sample_completions(tiny_model_dir, tokenizer, prompts, config(), batch_size=4)
        assert [without_logprobs(c) for c in before] == [without_logprobs(c) for c in from_disk]
        with torch.no_grad():  # an "update": the sampler must see it at once
            policy.lm_head.weight.mul_(-3.0)
        after = sampler.sample(prompts, config())
        assert [c.token_ids for c in after] != [c.token_ids for c in before]
        # the engine's log-probabilities are those of the live weights
        ids = torch.tensor([prompts[0] + after[0].token_ids])
        with torch.no_grad():
            logits = policy.eval()(input_ids=ids).logits[0, len(prompts[0]) - 1 : -1]
        expected = torch.log_softmax(logits, -1).gather(
            -1, torch.tensor(after[0].token_ids)[:, None])[:, 0]
        assert after[0].logprobs == pytest.approx(expected.tolist(), abs=1e-4)
    finally:
        sampler.close()
