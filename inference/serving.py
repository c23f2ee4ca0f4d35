"""The generation service's logic, engine-agnostic: requests → engine runs → OpenAI shapes.

`Generator.prepare` validates a request against its model (kind, context length, value models'
tokenizers) and turns it into `Run`s, one per (prompt, choice). Each run streams `Delta`s;
`inference.formatting` turns them into completion or chat responses and stream chunks.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any

from inference.catalog import VALUE_MODEL, ModelCatalog, ResolvedModels, ServedModel
from inference.engines.base import Engine, GenerationRequest, SamplingOptions, TokenStep, ValueGuide
from inference.metrics import InferenceMetrics
from inference.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields
from inference.text import TextStream
from inference.tokens import TokenPieces, token_pieces
from inference.vas import DEFAULT_TOP_K
from modeling.sequences import render_chat
from services.errors import InvalidRequest
from services.reward_client import RewardClient

DEFAULT_COMPLETION_TOKENS = 16
"""OpenAI's default max_tokens for /v1/completions."""


@dataclass(frozen=True)
class Delta:
    """New text of one choice, with the tokens behind it."""

    index: int
    text: str
    steps: list[TokenStep]
    offsets: list[int]
    """Where each step's token starts in the choice's text (`Run.offsets`)."""
    finish_reason: str | None = None


@dataclass
class Run:
    """One choice of one prompt: what to send the engine, and its running result."""

    index: int
    prompt_text: str
    prompt_ids: list[int]
    request: GenerationRequest
    stream: TextStream
    steps: list[TokenStep] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    """Per step, the characters of the text before its token: those its predecessors
    decoded to whole (a token holding the last bytes of a character starts at that
    character), at most the text's length."""
    finish_reason: str | None = None

    @property
    def text(self) -> str:
        return self.stream.emitted

    def ends_on_stop_token(self, step: TokenStep) -> bool:
        """The engine ended the sequence on one of its stop tokens (an eos, an end of turn):
        its text is no part of the answer, whether or not the tokenizer calls it special."""
        return (step.finish_reason == "stop"
                and step.token_id in self.request.options.stop_token_ids)


@dataclass
class Prepared:
    id: str
    served: ServedModel
    tokenizer: Any
    pieces: TokenPieces
    """Each token's text and bytes, for log-probabilities."""
    runs: list[Run]
    body: SamplingFields
    project_id: str | None

    @property
    def prompt_tokens(self) -> int:
        seen: dict[int, int] = {}
        for run in self.runs:  # a prompt counts once however many choices it has
            seen[id(run.prompt_ids)] = len(run.prompt_ids)
        return sum(seen.values())

    @property
    def completion_tokens(self) -> int:
        return sum(len(run.steps) for run in self.runs)


class Generator:
    def __init__(self, catalog: ModelCatalog, engine: Engine, rewards: RewardClient,
                 metrics: InferenceMetrics, *, stream_interval: int = 1,
                 max_sequences: int = 256):
        self.catalog, self.engine, self.rewards, self.metrics = catalog, engine, rewards, metrics
        self.max_sequences = max_sequences
        """Completions one request may ask for (`InferenceSettings.max_sequences_per_request`)."""
        self.models = ResolvedModels(catalog)
        self._vocabularies_compared: dict[tuple[int, int], bool] = {}
        self.stream_interval = stream_interval
        """Tokens per delta after the first (`InferenceSettings.stream_interval`)."""

    # -- preparing -------------------------------------------------------------------------

    async def prepare(self, body: CompletionRequest | ChatCompletionRequest,
                      project_id: str | None) -> Prepared:
        served = await self.models.resolve(body.model, project_id)
        values = [await self.models.resolve(guide.model, project_id, kinds=(VALUE_MODEL,),
                                            param=f"value_guidance[{i}].model")
                  for i, guide in enumerate(body.value_guidance or [])]
        return await asyncio.to_thread(self._prepare, body, project_id, served, values)

    def _prepare(self, body: CompletionRequest | ChatCompletionRequest, project_id: str | None,
                 served: ServedModel, values: list[ServedModel]) -> Prepared:
        tokenizer = self.catalog.tokenizer(served)
        prompts = self._prompts(body, tokenizer)
        limit = self.catalog.max_model_len(served)
        guides = self._value_guides(body, served, tokenizer, values)
        vocab = len(tokenizer)
        if any(not 0 <= t < vocab for t in body.stop_token_ids or ()):
            raise InvalidRequest(f"stop_token_ids must be token ids in [0, {vocab})",
                                 param="stop_token_ids")
        stop_ids = ((() if body.ignore_eos else self.catalog.eos_token_ids(served))
                    + tuple(body.stop_token_ids or ()))
        samples = body.best_of_n.n if body.best_of_n is not None else body.n
        if len(prompts) * samples > self.max_sequences:
            raise InvalidRequest(
                f"{len(prompts)} prompt(s) x {samples} completion(s) each is "
                f"{len(prompts) * samples} sequences; a request may ask for at most "
                f"{self.max_sequences} (ALIGND_MAX_SEQUENCES_PER_REQUEST)",
                param="best_of_n.n" if body.best_of_n is not None else "n",
                code="too_many_sequences")
        request_id = f"{'chatcmpl' if isinstance(body, ChatCompletionRequest) else 'cmpl'}-" \
                     f"{uuid.uuid4().hex}"
        runs: list[Run] = []
        for prompt_text, prompt_ids in prompts:
            options = replace(self._options(body, len(prompt_ids), limit, guides),
                              stop_token_ids=stop_ids, vocab_limit=vocab)
            for choice in range(samples):
                seed = None if body.seed is None else body.seed + choice
                index = len(runs)
                request = GenerationRequest(request_id=f"{request_id}-{index}", model=served.id,
                                            prompt_ids=prompt_ids,
                                            options=_with_seed(options, seed))
                runs.append(Run(index, prompt_text, prompt_ids, request,
                                TextStream(tokenizer, body.stop_strings)))
        return Prepared(request_id, served, tokenizer, token_pieces(tokenizer), runs, body,
                        project_id)

    @staticmethod
    def _prompts(body: CompletionRequest | ChatCompletionRequest,
                 tokenizer: Any) -> list[tuple[str, list[int]]]:
        if isinstance(body, ChatCompletionRequest):
            if tokenizer.chat_template is None:
                raise InvalidRequest(f"model {body.model!r} has no chat template; use "
                                     "/v1/completions", param="messages", code="no_chat_template")
            try:
                messages = [{"role": m.role, "content": m.text()} for m in body.messages]
                text = render_chat(tokenizer, messages, generation_prompt=True)
            except ValueError as exc:
                raise InvalidRequest(str(exc), param="messages") from exc
            return [(text, tokenizer(text, add_special_tokens=False)["input_ids"])]
        prompt: list[Any] = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if all(isinstance(p, int) for p in prompt):
            prompt = [prompt]
        out = []
        vocab = len(tokenizer)
        for item in prompt:
            if isinstance(item, str):
                out.append((item, tokenizer(item)["input_ids"]))
            else:
                ids = list(item)
                if not ids or any(not 0 <= t < vocab for t in ids):
                    raise InvalidRequest(f"token ids must be in [0, {vocab}) and non-empty",
                                         param="prompt")
                out.append((tokenizer.decode(ids), ids))
        if body.best_of_n is not None and len(out) != 1:
            raise InvalidRequest("best_of_n takes a single prompt", param="prompt")
        return out

    def _value_guides(self, body: SamplingFields, served: ServedModel, tokenizer: Any,
                      values: list[ServedModel]) -> tuple[ValueGuide, ...]:
        """The guides the engine runs, ``values`` being each guide's resolved model."""
        guides = []
        for i, (guide, value) in enumerate(zip(body.value_guidance or [], values, strict=True)):
            param = f"value_guidance[{i}].model"
            theirs = self.catalog.tokenizer(value)
            if not self._same_vocabulary(theirs, tokenizer):
                raise InvalidRequest(
                    f"value model {guide.model!r} uses a different tokenizer from model "
                    f"{served.id!r} ({len(theirs)} vs {len(tokenizer)} tokens, different "
                    "vocabularies): VAS scores the base model's candidate tokens, so a value "
                    "model must share its tokenizer", param=param, code="tokenizer_mismatch")
            if guide.beta != 0:  # β = 0 adds nothing: skip the value model's forward passes
                guides.append(ValueGuide(value.id, guide.beta))
        return tuple(guides)

    def _same_vocabulary(self, one: Any, other: Any) -> bool:
        """Compared once per pair: `get_vocab` builds a dict of every token, and the catalog
        hands out one tokenizer object per folder."""
        pair = (id(one), id(other))
        if pair not in self._vocabularies_compared:
            self._vocabularies_compared[pair] = one.get_vocab() == other.get_vocab()
        return self._vocabularies_compared[pair]

    @staticmethod
    def _options(body: CompletionRequest | ChatCompletionRequest, prompt_len: int, limit: int,
                 guides: tuple[ValueGuide, ...]) -> SamplingOptions:
        if prompt_len >= limit:
            raise InvalidRequest(f"the prompt is {prompt_len} tokens; model {body.model!r} takes "
                                 f"at most {limit} tokens in all, prompt and completion",
                                 param="prompt" if isinstance(body, CompletionRequest)
                                 else "messages", code="context_length_exceeded")
        if isinstance(body, ChatCompletionRequest):
            asked = body.max_completion_tokens or body.max_tokens
            max_tokens = asked or limit - prompt_len
            logprobs = (body.top_logprobs or 0) if body.logprobs else None
        else:
            max_tokens = body.max_tokens or DEFAULT_COMPLETION_TOKENS
            logprobs = body.logprobs
        if body.min_tokens > max_tokens:
            raise InvalidRequest(f"min_tokens must be at most max_tokens ({max_tokens}), got "
                                 f"{body.min_tokens}", param="min_tokens")
        if prompt_len + max_tokens > limit:
            raise InvalidRequest(
                f"max_tokens must be at most {limit - prompt_len} for this {prompt_len}-token "
                f"prompt (model {body.model!r} takes {limit} tokens in all), got {max_tokens}",
                param="max_tokens", code="context_length_exceeded")
        top_k = body.top_k if body.top_k and body.top_k > 0 else 0
        if body.value_guidance and not top_k:  # VAS draws from the top-k candidates
            top_k = DEFAULT_TOP_K
        return SamplingOptions(
            max_tokens=max_tokens,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p, top_k=top_k, seed=body.seed,
            logprobs=logprobs, value_guidance=guides, ignore_eos=body.ignore_eos,
            min_tokens=body.min_tokens)

    # -- running -----------------------------------------------------------------------------

    async def deltas(self, prepared: Prepared) -> AsyncIterator[Delta]:
        """Every run's deltas as they come, interleaved; cancelling this cancels every run."""
        if len(prepared.runs) == 1:  # the common case needs no task or queue in between
            async with aclosing(self._run(prepared.runs[0])) as deltas:
                async for delta in deltas:
                    yield delta
            return
        queue: asyncio.Queue[Delta | BaseException | None] = asyncio.Queue()

        async def drive(run: Run) -> None:
            try:
                async for delta in self._run(run):
                    queue.put_nowait(delta)
            except Exception as exc:  # noqa: BLE001 - handed to the consumer below
                queue.put_nowait(exc)
            finally:  # cancellation (the consumer went away) propagates after this
                queue.put_nowait(None)

        tasks = [asyncio.create_task(drive(run)) for run in prepared.runs]
        try:
            remaining = len(tasks)
            while remaining:
                item = await queue.get()
                if item is None:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, run: Run) -> AsyncGenerator[Delta, None]:
        """The run's deltas: the first token at once, then one delta per `stream_interval`
        tokens (or more: whatever the engine hands over in one list), and the last."""
        text, held = "", []
        submitted = time.perf_counter()
        async with aclosing(self.engine.generate(run.request)) as stream:
            async for steps in stream:
                if not run.steps and steps:
                    self.metrics.first_token.observe(time.perf_counter() - submitted)
                finish = None
                for taken, step in enumerate(steps, 1):
                    run.offsets.append(len(run.stream.text))
                    if not run.ends_on_stop_token(step):
                        text += run.stream.push(step.token_id)
                    finish = "stop" if run.stream.stopped else step.finish_reason
                    if finish is not None:
                        steps = steps[:taken]
                        break
                if finish is not None and not run.stream.stopped:
                    text += run.stream.finish()
                run.steps.extend(steps)
                held.extend(steps)
                self.metrics.generated_tokens.inc(len(steps))
                if finish is not None:
                    run.finish_reason = finish
                    # A stop string cut the text: no token starts past its end.
                    run.offsets = [min(offset, len(run.text)) for offset in run.offsets]
                    yield Delta(run.index, text, held, run.offsets[-len(held):], finish)
                    return
                if len(run.steps) == len(held) or len(held) >= self.stream_interval:
                    yield Delta(run.index, text, held, run.offsets[-len(held):])
                    text, held = "", []

    async def complete(self, prepared: Prepared) -> None:
        """Run every choice to the end (results land on the runs)."""
        async for _ in self.deltas(prepared):
            pass

    async def best_of_n(self, prepared: Prepared) -> list[dict[str, Any]]:
        """Score every run's text with the request's reward; returns the results in run order."""
        spec = prepared.body.best_of_n
        assert spec is not None
        items = [{"prompt": run.prompt_text, "response": run.text, "item": spec.item}
                 for run in prepared.runs]
        return await self.rewards.score(items, spec.reward, param="best_of_n.reward",
                                        project=prepared.project_id)


def _with_seed(options: SamplingOptions, seed: int | None) -> SamplingOptions:
    return replace(options, seed=seed)
