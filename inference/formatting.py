"""OpenAI response shapes from finished runs, and server-sent-event chunks from deltas."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from inference.engines.base import TokenStep
from inference.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionResponse,
    ChoiceLogprobs,
    CompletionChoice,
    CompletionLogprobs,
    CompletionResponse,
    ScoredSample,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from inference.serving import Delta, Generator, Prepared, Run
from inference.tokens import TokenPieces

DONE = "data: [DONE]\n\n"


def usage(prepared: Prepared) -> Usage:
    prompt, completion = prepared.prompt_tokens, prepared.completion_tokens
    return Usage(prompt_tokens=prompt, completion_tokens=completion,
                 total_tokens=prompt + completion)


def _alternatives(pieces: TokenPieces, step: TokenStep) -> list[tuple[int, float]]:
    """The step's most likely tokens, less ids past the tokenizer's (a padded vocabulary's
    rows, which are never sampled and have no text)."""
    return [(token, logprob) for token, logprob in step.top_logprobs.items()
            if pieces.knows(token)]


def completion_logprobs(pieces: TokenPieces, steps: list[TokenStep],
                        offsets: list[int]) -> CompletionLogprobs:
    """``offsets``: where each step's token starts in the choice's text (`Run.offsets`)."""
    return CompletionLogprobs(
        tokens=[pieces.text(s.token_id) for s in steps],
        token_logprobs=[s.logprob for s in steps],
        top_logprobs=[{pieces.text(t): lp for t, lp in _alternatives(pieces, s)}
                      for s in steps],
        text_offset=offsets)


def chat_logprobs(pieces: TokenPieces, steps: list[TokenStep]) -> ChoiceLogprobs:
    def entry(token_id: int, logprob: float) -> TopLogprob:
        return TopLogprob(token=pieces.text(token_id), logprob=logprob,
                          bytes=list(pieces.raw(token_id)))

    content = []
    for step in steps:
        head = entry(step.token_id, step.logprob if step.logprob is not None else 0.0)
        content.append(TokenLogprob(**head.model_dump(), top_logprobs=[
            entry(t, lp) for t, lp in _alternatives(pieces, step)]))
    return ChoiceLogprobs(content=content)


def _wants_logprobs(prepared: Prepared) -> bool:
    return prepared.runs[0].request.options.logprobs is not None


def completion_response(prepared: Prepared, runs: list[Run],
                        samples: list[ScoredSample] | None = None) -> CompletionResponse:
    logprobs = _wants_logprobs(prepared)
    choices = [CompletionChoice(
        index=i, text=run.text, finish_reason=run.finish_reason,  # type: ignore[arg-type]
        logprobs=completion_logprobs(prepared.pieces, run.steps, run.offsets)
        if logprobs else None)
        for i, run in enumerate(runs)]
    return CompletionResponse(id=prepared.id, model=prepared.served.id, choices=choices,
                              usage=usage(prepared), alignd_samples=samples)


def chat_response(prepared: Prepared, runs: list[Run],
                  samples: list[ScoredSample] | None = None) -> ChatCompletionResponse:
    logprobs = _wants_logprobs(prepared)
    choices = [ChatChoice(
        index=i, message=AssistantMessage(content=run.text),
        finish_reason=run.finish_reason,  # type: ignore[arg-type]
        logprobs=chat_logprobs(prepared.pieces, run.steps) if logprobs else None)
        for i, run in enumerate(runs)]
    return ChatCompletionResponse(id=prepared.id, model=prepared.served.id, choices=choices,
                                  usage=usage(prepared), alignd_samples=samples)


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


async def sse(prepared: Prepared, deltas: AsyncIterator[Delta], chat: bool,
              include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk shapes, ending with ``data: [DONE]``."""
    head = {"id": prepared.id, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()), "model": prepared.served.id}
    # Every chunk starts alike: render that part once, and only each choice per event.
    opening = f"data: {json.dumps(head, separators=(',', ':'))[:-1]},\"choices\":["
    logprobs = _wants_logprobs(prepared)
    if chat:  # the role comes first, once per choice
        for run in prepared.runs:
            yield _event({**head, "choices": [{"index": run.index, "delta": {
                "role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]})
    async for delta in deltas:
        if not delta.text and delta.finish_reason is None and not logprobs:
            continue
        choice: dict[str, Any] = {"index": delta.index, "finish_reason": delta.finish_reason}
        if chat:
            choice["delta"] = {"content": delta.text} if delta.text else {}
            choice["logprobs"] = (chat_logprobs(prepared.pieces, delta.steps).model_dump()
                                  if logprobs else None)
        else:
            choice["text"] = delta.text
            choice["logprobs"] = (completion_logprobs(prepared.pieces, delta.steps,
                                                      delta.offsets).model_dump()
                                  if logprobs else None)
        yield f"{opening}{json.dumps(choice, separators=(',', ':'))}]}}\n\n"
    if include_usage:
        yield _event({**head, "choices": [], "usage": usage(prepared).model_dump()})
    yield DONE


async def respond(generator: Generator, prepared: Prepared,
                  chat: bool) -> CompletionResponse | ChatCompletionResponse | AsyncIterator[str]:
    """The whole answer to a prepared request: a stream of events, or one response."""
    body = prepared.body
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse(prepared, generator.deltas(prepared), chat, include_usage)
    await generator.complete(prepared)
    runs, samples = prepared.runs, None
    if body.best_of_n is not None:
        results = await generator.best_of_n(prepared)
        scores = [r.get("score") for r in results]
        best = max(range(len(runs)), key=lambda i: -float("inf") if scores[i] is None
                   else float(scores[i]))  # type: ignore[arg-type]
        runs = [runs[best]]
        if body.best_of_n.return_all:
            samples = [ScoredSample(text=run.text, score=score, error=result.get("error"))
                       for run, score, result in zip(prepared.runs, scores, results)]
    build = chat_response if chat else completion_response
    return build(prepared, runs, samples)
