"""The contract every generation engine keeps (torch and vLLM), so one test suite runs on both.

An engine turns one `GenerationRequest` (token ids in, sampling options) into a stream of
`TokenStep`s, ending with a finish reason. Everything textual (detokenising, stop strings,
OpenAI shapes, `n`, best-of-N) lives above it in `inference.serving`, the same for every engine.
Closing the stream early (a stop string matched, a client went away) frees the request's slot.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Literal, Protocol

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class ValueGuide:
    """One value model steering a request (VAS): its registry id and its weight β."""

    model: str
    beta: float


@dataclass(frozen=True)
class SamplingOptions:
    max_tokens: int
    temperature: float = 1.0
    """0 means greedy."""
    top_p: float = 1.0
    top_k: int = 0
    """0 means no top-k cut; with `value_guidance` it is the candidate count k."""
    seed: int | None = None
    logprobs: int | None = None
    """None: no log-probabilities; n >= 0: the sampled token's plus the n most likely."""
    value_guidance: tuple[ValueGuide, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    """Tokens that end the sequence ("stop"): the model's eos tokens, unless the request
    ignores them (`ignore_eos`, also passed so an engine with eos logic of its own can skip it)."""
    ignore_eos: bool = False
    min_tokens: int = 0
    """Tokens before which no stop token may be sampled (they are masked until then)."""
    vocab_limit: int | None = None
    """Ids at or past this are never sampled: the tokenizer's size, for a model whose
    vocabulary is padded past its tokenizer's (Qwen2's is), whose extra rows decode to
    nothing. None: any id of the model."""


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    model: str
    """A registry id the engine's `ModelResolver` knows."""
    prompt_ids: list[int]
    options: SamplingOptions
    stream: bool = True
    """False: the sequence is handed over whole when it finishes (one wake-up of its reader,
    not one per step), for readers that want it whole, like a trainer's rollouts. Engines
    that stream anyway may ignore it."""


@dataclass(frozen=True)
class TokenStep:
    """One generated token; `finish_reason` is set on the last step of a sequence."""

    token_id: int
    logprob: float | None = None
    """log p(token) under the model's own distribution: before VAS, temperature, top-k and
    top-p (vLLM's raw_logprobs; what both engines report)."""
    top_logprobs: dict[int, float] = field(default_factory=dict)
    finish_reason: FinishReason | None = None


class Engine(Protocol):
    """What `inference.serving` needs of an engine."""

    name: str

    def generate(self, request: GenerationRequest) -> AsyncGenerator[list[TokenStep], None]:
        """Stream the request's tokens in non-empty lists: each list holds every step made
        since the last one, so a consumer that falls behind takes its backlog in one go. Closing
        the iterator cancels the request."""
        ...

    async def close(self) -> None:
        """Stop background work and free the models."""
        ...

    def queue_depth(self) -> int:
        """Requests waiting for a slot (for /metrics)."""
        ...

    def running(self) -> int:
        """Requests holding a slot now (for /metrics; a dropped client's slot leaves this)."""
        ...
