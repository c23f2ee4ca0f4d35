"""OpenAI-compatible request and response models of the inference service, plus alignd's
decode-time extensions (`value_guidance`, `best_of_n`), which ride in the body as `extra_body`.

Checks say the allowed range and the value received; anything unknown is refused, so a typo in
a sampling parameter is an error rather than silently ignored.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.text import Identifier, ModelText, well_formed

MAX_N = 64
MAX_BEST_OF = 256
MAX_STOP_TOKEN_IDS = 32
MAX_STOP = 8


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ValueGuidance(Strict):
    model: Identifier = Field(min_length=1,
                              description="A registered value model tied to the model.")
    beta: float = Field(ge=-100, le=100, description="Weight of this value model's advantage.")


class BestOfN(Strict):
    n: int = Field(ge=1, le=MAX_BEST_OF)
    reward: dict[str, Any] = Field(description="A reward spec, as reward_service /v1/score takes.")
    item: dict[str, Any] = Field(default_factory=dict)
    """Extra fields graders reference as {{item.<field>}} (e.g. the gold `answer`)."""
    return_all: bool = False
    """Also return every sample with its score (`alignd_samples` on the response)."""


class StreamOptions(Strict):
    include_usage: bool = False


class SamplingFields(BaseModel):
    """The sampling parameters both endpoints share (OpenAI's names and ranges)."""

    model_config = ConfigDict(extra="forbid")
    model: Identifier = Field(min_length=1)
    n: int = Field(default=1, ge=1, le=MAX_N)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=-1, le=1000)
    """-1 or 0: no top-k cut (vLLM's and OpenAI-style servers' convention)."""
    max_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    value_guidance: list[ValueGuidance] | None = Field(default=None, max_length=8)
    best_of_n: BestOfN | None = None
    ignore_eos: bool = False
    """Generate max_tokens whatever the model says (vLLM's extension; for benchmarks)."""
    stop_token_ids: list[int] | None = Field(default=None, max_length=MAX_STOP_TOKEN_IDS)
    """Token ids that end a choice ("stop") besides the model's own eos (vLLM's extension);
    ignore_eos leaves these in force. As with a stop string, and with the model's own stop
    tokens, the stop token's text is no part of the answer."""
    min_tokens: int = Field(default=0, ge=0)
    """No stop token (eos or stop_token_ids) may end a choice before this many tokens (vLLM's
    extension)."""

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, stop: str | list[str] | None) -> str | list[str] | None:
        strings = [stop] if isinstance(stop, str) else (stop or [])
        if len(strings) > MAX_STOP:
            raise ValueError(f"stop takes at most {MAX_STOP} strings, got {len(strings)}")
        if any(not s for s in strings):
            raise ValueError("stop strings must not be empty")
        return stop

    @model_validator(mode="after")
    def _compatible(self) -> SamplingFields:
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0, 0.0):
                raise ValueError(f"{name} is not supported; leave it unset or 0")
        if self.best_of_n is not None and self.stream:
            raise ValueError("best_of_n cannot stream: the best sample is known only at the end")
        if self.best_of_n is not None and self.n != 1:
            raise ValueError(f"best_of_n returns one choice; n must be 1, got {self.n}")
        return self

    @property
    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(SamplingFields):
    prompt: ModelText | list[ModelText] | list[int] | list[list[int]]
    """Any text (a model's own output fed back may hold NUL, `services.text`), or token ids."""
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1, le=1)
    """OpenAI's server-side best_of; alignd's reward-based version is `best_of_n`."""

    @model_validator(mode="after")
    def _supported(self) -> CompletionRequest:
        if self.echo:
            raise ValueError("echo is not supported")
        if self.suffix:
            raise ValueError("suffix is not supported")
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt must not be empty")
        return self


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: ModelText | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            parts = [p.get("text", "") for p in self.content if p.get("type") == "text"]
            if len(parts) != len(self.content):
                raise ValueError("only text content parts are supported")
            return well_formed("".join(parts))
        return self.content or ""


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self


# -- responses -----------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None


class ScoredSample(BaseModel):
    text: str
    score: float | None
    error: str | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    alignd_samples: list[ScoredSample] | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None
    alignd_samples: list[ScoredSample] | None = None


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    kind: str
    base_model: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]
