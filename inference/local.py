"""The inference engine run in process, for trainers: the one entry `trainer` uses.

A trainer samples rollouts through the same continuous-batching torch engine, sampling code and
stop handling that serve requests. Models are folders by path (no registry), and a folder can
be served from a model the trainer holds in memory (`pin`): the policy being trained is sampled
from its live weights, with no copy and nothing written to disk between updates.

Calls are synchronous: the engine's requests run on an event loop of this object's own thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import GenerationConfig, PreTrainedTokenizerBase

from inference.catalog import FolderCatalog
from inference.engines.base import GenerationRequest, SamplingOptions
from inference.engines.torch_engine import TorchEngine

__all__ = ["LocalGenerator", "Sample", "SamplingOptions", "stop_token_ids"]


@dataclass(frozen=True)
class Sample:
    token_ids: list[int]
    """The sampled ids, through the first stop token when one was sampled; never empty."""
    logprobs: list[float]
    """log p(token) under the model's own distribution (before temperature, top-k, top-p)."""
    finished: bool
    """It ended on a stop token rather than at max_tokens."""


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
        raise ValueError("the model has no eos token to stop a completion on")
    return ids


class LocalGenerator:
    def __init__(self, *, max_batch_size: int, device: str = "cpu") -> None:
        self._engine = TorchEngine(FolderCatalog(), max_batch_size=max_batch_size, device=device)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="local-generator",
                                        daemon=True)
        self._thread.start()

    def pin(self, folder: str | Path, model: Any) -> None:
        """Serve ``model`` (in memory, e.g. a policy in training) as the folder ``folder``,
        whose config and tokenizer it shares. Its weights are read live at every forward."""
        self._engine.pin(str(folder), model)

    def generate(self, folder: str | Path, prompts: Sequence[list[int]],
                 options: Sequence[SamplingOptions]) -> list[Sample]:
        """One sample per prompt (token ids) with its options, in order; all decoded together."""
        future = asyncio.run_coroutine_threadsafe(
            self._generate(str(folder), prompts, options), self._loop)
        return future.result()

    async def _generate(self, folder: str, prompts: Sequence[list[int]],
                        options: Sequence[SamplingOptions]) -> list[Sample]:
        async def one(index: int) -> Sample:
            request = GenerationRequest(request_id=f"local-{index}", model=folder,
                                        prompt_ids=prompts[index], options=options[index])
            ids: list[int] = []
            logprobs: list[float] = []
            finished = False
            async for steps in self._engine.generate(request):
                ids.extend(step.token_id for step in steps)
                logprobs.extend(step.logprob or 0.0 for step in steps)
                finished = steps[-1].finish_reason == "stop"
            return Sample(ids, logprobs, finished)

        return list(await asyncio.gather(*(one(index) for index in range(len(prompts)))))

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._engine.close(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
