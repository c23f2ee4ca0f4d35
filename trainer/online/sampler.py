"""Completions sampled through alignd's own inference engines (`inference.local`).

The sampler behind value-model rollouts and online RL, over the generator it is given: the
torch engine of the inference service run in process (the continuous-batching loop, sampling
code and stop handling that serve requests; value-model rollouts use it), or for online RL the
one `RolloutEngine.name` picks (`OnlineLoop._generator`): by default a `BatchGenerator`, which
decodes a Llama policy's rollouts as one static batch with a lean decoder. Online RL samples
from the policy's live weights (`Sampler(live_model=...)`): nothing is written to disk between
updates.

Sampling is reproducible: every sequence draws from a generator seeded from `options.seed` and
its own index, so the same weights, prompts and options give the same completions whatever the
batch size or the order the engine finishes them in.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from inference.local import Generator, LocalGenerator, SamplingOptions, stop_token_ids

__all__ = ["Completion", "RolloutOptions", "Sampler", "sample_completions", "sequence_seed",
           "stop_token_ids"]


@dataclass(frozen=True)
class RolloutOptions:
    samples_per_prompt: int
    max_new_tokens: int
    temperature: float
    """0: greedy."""
    top_k: int
    """0: the whole vocabulary."""
    seed: int
    top_p: float = 1.0


@dataclass(frozen=True)
class Completion:
    prompt: int
    """Index of its prompt in the list given to `Sampler.sample`."""
    token_ids: list[int]
    """The sampled ids, through the first stop token when one was sampled."""
    text: str
    """The ids decoded without special tokens (what a grader reads)."""
    finished: bool
    """It ended on a stop token rather than at max_new_tokens."""
    logprobs: list[float]
    """The engine's log p of each sampled id under the model's own distribution."""


def sequence_seed(seed: int, index: int) -> int:
    """The sampling seed of sequence ``index`` of a run seeded with ``seed``."""
    return random.Random(f"rollout:{seed}:{index}").getrandbits(63)


class Sampler:
    """Completions of token-id prompts from the model folder ``model_path``, or from
    ``live_model`` (a model in memory that shares that folder's config and tokenizer), through
    ``generator`` (the torch engine, or vLLM's with the live weights pushed before sampling)."""

    def __init__(self, model_path: str | Path, tokenizer: PreTrainedTokenizerBase,
                 generator: Generator, *, live_model: Any = None) -> None:
        self.model_path, self.tokenizer, self.live_model = str(model_path), tokenizer, live_model
        self.stops = tuple(stop_token_ids(model_path, tokenizer))
        self._generator = generator
        if live_model is not None:
            self._generator.pin(self.model_path, live_model)
        self.stale = live_model is not None
        """The live weights changed since the generator last saw them (`mark_updated`)."""

    def mark_updated(self) -> None:
        """The live model's weights were updated: refresh the generator before sampling."""
        self.stale = True

    def sample(self, prompts: list[list[int]], options: RolloutOptions) -> list[Completion]:
        """`options.samples_per_prompt` completions of every prompt (none empty), in order:
        all of prompt 0's, then prompt 1's, ..."""
        owners = [prompt for prompt in range(len(prompts))
                  for _ in range(options.samples_per_prompt)]
        per_sequence = [SamplingOptions(max_tokens=options.max_new_tokens,
                                        temperature=options.temperature, top_k=options.top_k,
                                        top_p=options.top_p, logprobs=0,
                                        seed=sequence_seed(options.seed, index),
                                        stop_token_ids=self.stops,
                                        vocab_limit=len(self.tokenizer))
                        for index in range(len(owners))]
        if self.stale:
            self._generator.refresh()
            self.stale = False
        training = self.live_model is not None and self.live_model.training
        if training:
            self.live_model.eval()  # no dropout while sampling
        try:
            samples = self._generator.generate(self.model_path, [prompts[p] for p in owners],
                                               per_sequence)
        finally:
            if training:
                self.live_model.train()
        return [Completion(prompt, s.token_ids,
                           str(self.tokenizer.decode(s.token_ids, skip_special_tokens=True)),
                           s.finished, s.logprobs)
                for prompt, s in zip(owners, samples, strict=True)]

    def close(self) -> None:
        self._generator.close()


def sample_completions(model_path: str | Path, tokenizer: PreTrainedTokenizerBase,
                       prompts: list[list[int]], options: RolloutOptions, *, batch_size: int,
                       device: str = "cpu") -> list[Completion]:
    """Completions from a frozen model folder, with an engine that lives for this call only."""
    sampler = Sampler(model_path, tokenizer,
                      LocalGenerator(max_batch_size=batch_size, device=device))
    try:
        return sampler.sample(prompts, options)
    finally:
        sampler.close()
