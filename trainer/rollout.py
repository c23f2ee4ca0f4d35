"""Completions sampled from a frozen causal LM, batch by batch with `generate`.

The sampler behind value-model training (and, later, online RL): kept to one function with
plain inputs (token ids in, token ids and text out) so that it can be swapped for the
inference engine. Sampling is reproducible: the same model, prompts, config and device give
the same completions, drawn from a generator seeded with `config.seed` inside a forked RNG so
the caller's global random state is left as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class SamplingConfig:
    samples_per_prompt: int
    max_new_tokens: int
    temperature: float
    top_k: int
    """0: the whole vocabulary."""
    batch_size: int
    """Sequences per `generate` call."""
    seed: int


@dataclass(frozen=True)
class Completion:
    prompt: int
    """Index of its prompt in the list given to `sample_completions`."""
    token_ids: list[int]
    """The sampled ids, through the first stop token when one was sampled."""
    text: str
    """The ids decoded without special tokens (what a grader reads)."""
    finished: bool
    """It ended on a stop token rather than at max_new_tokens."""


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The model's generation stop tokens (e.g. <eos> and a chat turn's end), else the eos."""
    configured: Any = model.generation_config.eos_token_id
    if configured is None:
        configured = tokenizer.eos_token_id
    ids = [configured] if isinstance(configured, int) else list(configured or [])
    if not ids:
        raise ValueError("the base model has no eos token to stop a completion on")
    return ids


def _left_padded(prompts: list[list[int]], pad_id: int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(ids) for ids in prompts)
    input_ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)  # (B, P)
    attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)  # (B, P)
    for row, ids in enumerate(prompts):
        input_ids[row, length - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, length - len(ids) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def _cut_at_stop(ids: list[int], stops: set[int]) -> tuple[list[int], bool]:
    for position, token in enumerate(ids):
        if token in stops:
            return ids[: position + 1], True
    return ids, False


@torch.no_grad()
def sample_completions(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                       prompts: list[list[int]], config: SamplingConfig) -> list[Completion]:
    """`config.samples_per_prompt` completions of every prompt (token ids, none empty), in
    order: all of prompt 0's, then prompt 1's, ..."""
    device = model.device
    stops = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    generation = GenerationConfig(
        do_sample=True, temperature=config.temperature, top_k=config.top_k, top_p=1.0,
        max_new_tokens=config.max_new_tokens, pad_token_id=pad_id, eos_token_id=stops,
    )
    sequences = [index for index in range(len(prompts))
                 for _ in range(config.samples_per_prompt)]
    completions: list[Completion] = []
    was_training = model.training
    model.eval()
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(config.seed)
        for start in range(0, len(sequences), config.batch_size):
            batch = sequences[start : start + config.batch_size]
            input_ids, attention_mask = _left_padded([prompts[i] for i in batch], pad_id, device)
            output = model.generate(  # type: ignore[operator]  # transformers' stubs miss it
                input_ids=input_ids, attention_mask=attention_mask, generation_config=generation,
            )  # (B, P + new)
            for index, row in zip(batch, output[:, input_ids.shape[1] :].tolist()):
                ids, finished = _cut_at_stop(row, set(stops))
                text = str(tokenizer.decode(ids, skip_special_tokens=True))
                completions.append(Completion(index, ids, text, finished))
    model.train(was_training)
    return completions
