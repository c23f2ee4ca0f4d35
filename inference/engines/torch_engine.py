"""The torch engine: transformers models decoded in continuously batched steps on one thread.

Requests for the same model share one batch: each loop iteration samples one token for every
row, drops the rows that finished or whose client went away, admits waiting requests (their
prompts prefilled together, then merged into the batch's KV cache), and runs one forward pass
for the grown batch. Value-guided rows (VAS) also keep one KV cache per value model, and each
value model scores the top-k candidates of all the rows it guides in one batched pass.
"""

from __future__ import annotations

import asyncio
import queue
import secrets
import threading
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from inference.catalog import (
    VALUE_MODEL,
    Catalog,
    ResolvedModels,
    ServedModel,
)
from inference.engines.base import GenerationRequest, SamplingOptions, TokenStep
from inference.engines.guides import Guide, score_candidates
from inference.engines.kv import Forward, KVBatch, extend, prefill
from inference.engines.models import ResidentModels
from inference.sampling import sample_rows, top_logprobs
from inference.vas import DEFAULT_TOP_K, candidates, guided_logits

Outcome = TokenStep | BaseException


@dataclass
class _Sequence:
    request: GenerationRequest
    served: ServedModel
    loop: asyncio.AbstractEventLoop
    inbox: asyncio.Queue[Outcome]
    """Filled on ``loop`` by `_Outbox.flush`, read by `TorchEngine.generate`."""
    stop_ids: frozenset[int]
    pad_id: int
    generator: torch.Generator
    value_models: list[ServedModel]
    """The registry row of each `options.value_guidance` model, in order."""
    generated: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)
    guides: list[Guide] = field(default_factory=list)
    betas: list[float] = field(default_factory=list)
    """β_i of each guide."""
    held: list[TokenStep] = field(default_factory=list)
    """Steps of a request that is not streamed, until it finishes."""

    @property
    def options(self) -> SamplingOptions:
        return self.request.options


class _Outbox:
    """Steps and errors on their way from the decode thread to the requests' event loops.

    The decode thread posts as it goes and flushes once per decode step: one wake-up of each
    event loop per step, however many rows it has, rather than one per token.
    """

    def __init__(self) -> None:
        self._pending: dict[asyncio.AbstractEventLoop, list[tuple[_Sequence, Outcome]]] = {}

    def post(self, sequence: _Sequence, outcome: Outcome) -> None:
        self._pending.setdefault(sequence.loop, []).append((sequence, outcome))

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for loop, items in pending.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the event loop is gone: nobody is listening any more
                for sequence, _ in items:
                    sequence.cancelled.set()


def _deliver(items: list[tuple[_Sequence, Outcome]]) -> None:
    for sequence, outcome in items:
        sequence.inbox.put_nowait(outcome)


@dataclass
class _Group:
    """The running batch of one served model."""

    served: ServedModel
    forward: Forward
    rows: list[_Sequence]
    batch: KVBatch
    next_logits: Tensor
    """(B, V) float32 logits of each row's next token."""


class TorchEngine:
    name = "torch"

    def __init__(self, catalog: Catalog, *, max_batch_size: int = 64,
                 cache_bytes: int = 8 << 30, device: str | None = None,
                 dtype: torch.dtype = torch.float32, step_observer: Callable[[int], None] | None
                 = None):
        self._catalog = catalog
        self._max_batch = max_batch_size
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._models = ResidentModels(self._device, dtype, cache_bytes)
        self._observe_step = step_observer
        self._intake: queue.Queue[_Sequence] = queue.Queue()
        self._waiting: deque[_Sequence] = deque()
        self._groups: dict[str, _Group] = {}
        self._outbox = _Outbox()
        self._wake = threading.Event()
        self._registry = ResolvedModels(catalog)
        self._pad_ids: dict[str, int] = {}
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="torch-engine", daemon=True)
        self._thread.start()

    # -- the asyncio side -------------------------------------------------------------------

    async def _pad_id(self, served: ServedModel) -> int:
        pad = self._pad_ids.get(served.id)
        if pad is None:
            tokenizer = await asyncio.to_thread(self._catalog.tokenizer, served)
            eos = tokenizer.eos_token_id
            pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                      else (eos or 0))
            self._pad_ids[served.id] = pad
        return pad

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[list[TokenStep], None]:
        # Registry rows come from `ResolvedModels` on this side: a read on the decode thread
        # would hold up every row of the batch.
        served = await self._registry.resolve(request.model)
        pad = await self._pad_id(served)
        value_models = [await self._registry.resolve(guide.model, kinds=(VALUE_MODEL,),
                                                     param=f"value_guidance[{i}].model")
                        for i, guide in enumerate(request.options.value_guidance)]
        seed = request.options.seed
        generator = torch.Generator().manual_seed(seed if seed is not None
                                                  else secrets.randbits(63))
        sequence = _Sequence(request=request, served=served, loop=asyncio.get_running_loop(),
                             inbox=asyncio.Queue(),
                             stop_ids=frozenset(request.options.stop_token_ids), pad_id=pad,
                             generator=generator, value_models=value_models)
        self._intake.put(sequence)
        self._wake.set()
        try:
            while True:
                outcomes = [await sequence.inbox.get()]
                while not sequence.inbox.empty():  # a backlog goes out as one list
                    outcomes.append(sequence.inbox.get_nowait())
                steps: list[TokenStep] = []
                for outcome in outcomes:
                    if isinstance(outcome, BaseException):
                        if steps:
                            yield steps
                        raise outcome
                    steps.append(outcome)
                yield steps
                if steps[-1].finish_reason is not None:
                    return
        finally:
            sequence.cancelled.set()  # a no-op after the last token; frees the slot otherwise
            self._wake.set()

    def pin(self, folder: str, model: object) -> None:
        """Serve ``model``, held in memory by the caller, as the model folder ``folder``
        (`ResidentModels.pin`); call it while no request for that folder is running."""
        self._models.pin(folder, model)

    def queue_depth(self) -> int:
        return self._intake.qsize() + len(self._waiting)

    def running(self) -> int:
        return sum(len(group.rows) for group in list(self._groups.values()))

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        await asyncio.to_thread(self._thread.join, 30)

    # -- the decode thread ------------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while not self._closing:
                self._admit()
                if not self._groups:
                    self._wake.wait(0.05)
                    self._wake.clear()
                    continue
                for key in list(self._groups):
                    self._step(key)
                    self._outbox.flush()

    def _admit(self) -> None:
        while True:
            try:
                self._waiting.append(self._intake.get_nowait())
            except queue.Empty:
                break
        by_model: dict[str, list[_Sequence]] = {}
        still_waiting: deque[_Sequence] = deque()
        for sequence in self._waiting:
            if sequence.cancelled.is_set():
                continue
            group = self._groups.get(sequence.served.id)
            room = self._max_batch - (len(group.rows) if group else 0)
            admitted = by_model.setdefault(sequence.served.id, [])
            (admitted if len(admitted) < room else still_waiting).append(sequence)
        self._waiting = still_waiting
        for sequences in by_model.values():
            if sequences:
                try:
                    self._join(sequences)
                except Exception as exc:  # noqa: BLE001 - the requests fail, the engine goes on
                    for sequence in sequences:
                        self._outbox.post(sequence, exc)
        self._outbox.flush()

    def _join(self, sequences: list[_Sequence]) -> None:
        served = sequences[0].served
        group = self._groups.get(served.id)
        forward = group.forward if group else self._models.acquire(served)
        try:
            rows = [s.request.prompt_ids for s in sequences]
            batch, logits = prefill(forward, rows, sequences[0].pad_id, self._device)
            self._attach_guides(sequences)
        except Exception:
            for sequence in sequences:
                self._drop(sequence)
            if group is None:
                self._models.release(served)
            raise
        if group is None:
            self._groups[served.id] = _Group(served, forward, sequences, batch, logits.cpu())
        else:
            group.rows.extend(sequences)
            group.batch = group.batch.merge(batch)
            group.next_logits = torch.cat([group.next_logits, logits.cpu()])

    def _attach_guides(self, sequences: list[_Sequence]) -> None:
        """Load each row's value models and fill their prefix caches, a batch per model."""
        by_model: dict[str, list[tuple[Guide, _Sequence]]] = {}
        for sequence in sequences:
            for served, guidance in zip(sequence.value_models, sequence.options.value_guidance,
                                        strict=True):
                guide = Guide(served, self._models.acquire(served))
                sequence.guides.append(guide)
                sequence.betas.append(guidance.beta)
                by_model.setdefault(served.id, []).append((guide, sequence))
        for pairs in by_model.values():
            prompts = [sequence.request.prompt_ids for _, sequence in pairs]
            batch, _ = prefill(pairs[0][0].forward, prompts, pairs[0][1].pad_id, self._device)
            for row, (guide, _) in enumerate(pairs):
                guide.prefix = batch.select([row])

    def _step(self, key: str) -> None:
        group = self._groups[key]
        live = []
        for row, sequence in enumerate(group.rows):
            if sequence.cancelled.is_set():
                self._drop(sequence)
            else:
                live.append(row)
        sequences = [group.rows[row] for row in live]
        sampled = self._sample(sequences, group.next_logits[live])
        # The model's own distribution, for the rows that report log-probabilities: one pass.
        logprobs = (torch.log_softmax(group.next_logits, dim=-1)  # (B, V)
                    if any(s.options.logprobs is not None for s in sequences) else None)
        tokens: list[int] = []
        keep: list[int] = []
        for row, sequence, token in zip(live, sequences, sampled, strict=True):
            sequence.generated += 1
            finish = ("stop" if token in sequence.stop_ids else
                      "length" if sequence.generated >= sequence.options.max_tokens else None)
            step = self._token_step(sequence, None if logprobs is None else logprobs[row], token,
                                    finish)
            if sequence.request.stream:
                self._outbox.post(sequence, step)
            else:  # held until the sequence is done, then handed over in one delivery
                sequence.held.append(step)
                if finish is not None:
                    for held in sequence.held:
                        self._outbox.post(sequence, held)
            if finish is None:
                tokens.append(token)
                keep.append(row)
            else:
                self._drop(sequence)
        if self._observe_step is not None:
            self._observe_step(len(group.rows))
        if not keep:
            self._models.release(group.served)
            del self._groups[key]
            return
        if len(keep) < len(group.rows):
            group.rows = [group.rows[row] for row in keep]
            group.batch = group.batch.select(keep)
        try:
            group.batch, logits = extend(group.forward, group.batch, torch.tensor(tokens))
        except Exception as exc:  # noqa: BLE001 - fail this batch's requests, keep serving
            for sequence in group.rows:
                self._outbox.post(sequence, exc)
                self._drop(sequence)
            self._models.release(group.served)
            del self._groups[key]
            return
        group.next_logits = logits.cpu()

    def _sample(self, sequences: list[_Sequence], logits: Tensor) -> list[int]:
        """One token for each row of (B, V) logits; value-guided rows are steered first."""
        if not sequences:
            return []
        logits = _forbid(sequences, logits)
        guided = [row for row, sequence in enumerate(sequences) if sequence.guides]
        steered, candidate_ids = logits, {}
        if guided:
            steered = logits.clone()
            for row in guided:
                candidate_ids[row] = candidates(logits[row],
                                                sequences[row].options.top_k or DEFAULT_TOP_K)
            score_candidates([(guide, ids) for row, ids in candidate_ids.items()
                              for guide in sequences[row].guides])
            for row in guided:
                guides = sequences[row].guides
                values = torch.stack([guide.values for guide in guides])  # type: ignore[misc]
                betas = torch.tensor(sequences[row].betas)  # (M,)
                steered[row] = guided_logits(logits[row], candidate_ids[row], values, betas)
        options = [s.options for s in sequences]
        tokens = sample_rows(
            steered, [o.temperature for o in options],
            [(o.top_k or DEFAULT_TOP_K) if s.guides else o.top_k
             for o, s in zip(options, sequences)],
            [o.top_p for o in options], [s.generator for s in sequences])
        for row, ids in candidate_ids.items():  # each value model's cache now holds s ⊕ token
            chosen = int((ids == tokens[row]).nonzero()[0])
            for guide in sequences[row].guides:
                guide.choose(chosen)
        return tokens

    @staticmethod
    def _token_step(sequence: _Sequence, logprobs: Tensor | None, token: int,
                    finish: str | None) -> TokenStep:
        """logprobs: (V,) the row's log-probabilities, when any row of the step wants them."""
        wanted = sequence.options.logprobs
        if wanted is None or logprobs is None:
            return TokenStep(token_id=token, finish_reason=finish)  # type: ignore[arg-type]
        return TokenStep(token_id=token, logprob=float(logprobs[token]),
                         top_logprobs=top_logprobs(logprobs, wanted),
                         finish_reason=finish)  # type: ignore[arg-type]

    def _drop(self, sequence: _Sequence) -> None:
        sequence.cancelled.set()
        for guide in sequence.guides:
            self._models.release(guide.served)
        sequence.guides.clear()
        sequence.betas.clear()


def _forbid(sequences: list[_Sequence], logits: Tensor) -> Tensor:
    """(B, V) logits with what a row may not sample masked: its stop tokens while it is short
    of min_tokens, and ids past its tokenizer's (a padded vocabulary's rows)."""
    early = [row for row, s in enumerate(sequences)
             if s.generated < s.options.min_tokens and s.stop_ids]
    limits = [(row, s.options.vocab_limit) for row, s in enumerate(sequences)
              if s.options.vocab_limit is not None and s.options.vocab_limit < logits.shape[-1]]
    if not early and not limits:
        return logits
    logits = logits.clone()
    for row in early:
        logits[row, list(sequences[row].stop_ids)] = float("-inf")
    for row, limit in limits:
        logits[row, limit:] = float("-inf")
    return logits
