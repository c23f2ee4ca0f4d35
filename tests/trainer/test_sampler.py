"""Rollouts sampled through the inference service's torch engine (`trainer.rollout`)."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from trainer.rollout import SamplingConfig, sample_completions, stop_token_ids


def config(**overrides: float) -> SamplingConfig:
    settings = {"samples_per_prompt": 3, "max_new_tokens": 12, "temperature": 1.0, "top_k": 0,
                "batch_size": 4, "seed": 5, **overrides}
    return SamplingConfig(**settings)  # type: ignore[arg-type]


def test_completions_come_in_prompt_order_and_do_not_depend_on_the_batch_size(
        tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = [tokenizer(text)["input_ids"] for text in ("1+2=", "34-5=", "7*8=")]
    small = sample_completions(tiny_model_dir, tokenizer, prompts, config(batch_size=2))
    large = sample_completions(tiny_model_dir, tokenizer, prompts, config(batch_size=9))
    assert small == large
    assert [c.prompt for c in small] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    stops = set(stop_token_ids(tiny_model_dir, tokenizer))
    for completion in small:
        assert 1 <= len(completion.token_ids) <= 12
        assert completion.finished == (completion.token_ids[-1] in stops)
        assert not stops & set(completion.token_ids[:-1])  # cut at the first stop token
        assert completion.text == tokenizer.decode(completion.token_ids, skip_special_tokens=True)
    assert len({tuple(c.token_ids) for c in small}) > 1  # the sequences drew different samples
    other_seed = sample_completions(tiny_model_dir, tokenizer, prompts, config(seed=6))
    assert [c.token_ids for c in other_seed] != [c.token_ids for c in small]
