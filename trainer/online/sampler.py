"""Completions sampled from a frozen causal LM through alignd's own inference engine.

The sampler behind value-model training (and, later, online RL): the torch engine of the
inference service (`inference.engines.torch_engine`), run in process on the model's folder, so
rollouts are decoded by the same continuous-batching loop, sampling code and stop handling that
serve requests. Sampling is reproducible: every sequence draws from a generator seeded from
`config.seed` and its own index, so the same model, prompts and config give the same
completions whatever the batch size or the order the engine finishes them in.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from pathlib import Path

from transformers import GenerationConfig, PreTrainedTokenizerBase

from inference.catalog import FolderCatalog
from inference.engines.base import GenerationRequest, SamplingOptions
from inference.engines.torch_engine import TorchEngine


@dataclass(frozen=True)
class SamplingConfig:
    samples_per_prompt: int
    max_new_tokens: int
    temperature: float
    top_k: int
    """0: the whole vocabulary."""
    batch_size: int
    """Sequences the engine decodes together."""
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


def stop_token_ids(model_path: str | Path, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The model's generation stop tokens (e.g. <eos> and a chat turn's end), else the eos."""
    try:
        configured = GenerationConfig.from_pretrained(model_path).eos_token_id
    except OSError:  # no generation_config.json
        configured = None
    if configured is None:
        configured = tokenizer.eos_token_id
    ids = [configured] if isinstance(configured, int) else list(configured or [])
    if not ids:
        raise ValueError("the base model has no eos token to stop a completion on")
    return ids


def sequence_seed(seed: int, index: int) -> int:
    """The sampling seed of sequence ``index`` of a run seeded with ``seed``."""
    return random.Random(f"rollout:{seed}:{index}").getrandbits(63)


def sample_completions(model_path: str | Path, tokenizer: PreTrainedTokenizerBase,
                       prompts: list[list[int]], config: SamplingConfig,
                       device: str = "cpu") -> list[Completion]:
    """`config.samples_per_prompt` completions of every prompt (token ids, none empty), in
    order: all of prompt 0's, then prompt 1's, ..."""
    return asyncio.run(_sample(str(model_path), tokenizer, prompts, config, device))


async def _sample(model_path: str, tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]],
                  config: SamplingConfig, device: str) -> list[Completion]:
    stops = tuple(stop_token_ids(model_path, tokenizer))
    engine = TorchEngine(FolderCatalog(), max_batch_size=config.batch_size, device=device)

    async def one(index: int, prompt: int) -> Completion:
        options = SamplingOptions(max_tokens=config.max_new_tokens,
                                  temperature=config.temperature, top_k=config.top_k,
                                  seed=sequence_seed(config.seed, index), stop_token_ids=stops)
        request = GenerationRequest(request_id=f"rollout-{index}", model=model_path,
                                    prompt_ids=prompts[prompt], options=options)
        ids: list[int] = []
        finished = False
        async for steps in engine.generate(request):
            ids.extend(step.token_id for step in steps)
            finished = steps[-1].finish_reason == "stop"
        return Completion(prompt, ids, str(tokenizer.decode(ids, skip_special_tokens=True)),
                          finished)

    sequences = [prompt for prompt in range(len(prompts))
                 for _ in range(config.samples_per_prompt)]
    try:
        return list(await asyncio.gather(*(one(index, prompt)
                                           for index, prompt in enumerate(sequences))))
    finally:
        await engine.close()
