"""One static batch of prompts decoded to the end by `Decoder`, each row with its own
sampling options: the rollout loop of `inference.local.BatchGenerator`.

Every row keeps the torch engine's guarantee that its tokens depend on its prompt, the weights
and its seed alone, not on the batch, and draws the very tokens the torch engine draws for that
seed: its k-th token by inversion of its k-th uniform draw (`inference.sampling.invert`). A
generator's draws are one stream however they are cut, so each row draws the uniforms of all
its steps at once, and the whole batch is inverted in one call per step. A prompt given several
times (a GRPO group's samples) is prefilled once. Rows leave the batch, and its cache, as they
end.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from inference.engines.base import SamplingOptions
from inference.engines.decoder import Decoder
from inference.sampling import invert, processed_probs, uniform_draws

Decoded = tuple[list[int], list[float], bool]
"""A row's sampled ids (through its stop token), log p of each, and whether it stopped."""


@dataclass
class _Rows:
    """The per-row settings of the rows still decoding, each (B,) unless said."""

    index: Tensor
    """Each row's place in the batch as given."""
    temperature: Tensor
    """1 for greedy rows (which draw nothing)."""
    greedy: Tensor
    top_k: Tensor
    top_p: Tensor
    max_tokens: Tensor
    min_tokens: Tensor
    vocab_limit: Tensor
    """Ids from here on are never drawn: a padded vocabulary's rows past the tokenizer's."""
    stops: Tensor
    """(B, S) each row's stop ids, padded with -1."""
    generators: list[torch.Generator | None]
    """Each row's own (CPU) generator, seeded with its seed; None for a greedy row."""

    def select(self, keep: Tensor) -> _Rows:
        """Only the rows ``keep`` (a (B',) index), in that order."""
        rows = keep.tolist()
        return _Rows(**{f.name: getattr(self, f.name).index_select(0, keep)
                        for f in fields(self) if f.name != "generators"},
                     generators=[self.generators[row] for row in rows])

    def to(self, device: torch.device) -> _Rows:
        return replace(self, **{f.name: getattr(self, f.name).to(device)
                                for f in fields(self) if f.name != "generators"})


@torch.inference_mode()
def decode_static_batch(decoder: Decoder, prompts: Sequence[list[int]],
                        options: Sequence[SamplingOptions]) -> list[Decoded]:
    """One completion per prompt (token ids, none empty), with its options, in order.

    Options used: max_tokens, temperature (0 greedy), top_k, top_p, seed, stop_token_ids and
    min_tokens; log-probabilities are always reported, under the raw distribution."""
    if any(not prompt for prompt in prompts):
        raise ValueError("every prompt needs at least one token")
    if any(o.max_tokens < 1 for o in options):
        raise ValueError("max_tokens must be >= 1")
    device = decoder.device
    size, longest = len(prompts), max(len(prompt) for prompt in prompts)
    steps = max(o.max_tokens for o in options)
    rows = _rows(options, device)
    tokens = torch.zeros((size, steps), dtype=torch.long, device=device)  # (B, T)
    logprobs = torch.zeros((size, steps), device=device)  # (B, T) log p(token)
    lengths = torch.zeros(size, dtype=torch.long, device=device)  # (B,)
    stopped = torch.zeros(size, dtype=torch.bool, device=device)  # (B,)
    logits = _prefill(decoder, prompts, longest + steps, device)
    uniforms = _uniforms(rows.generators, steps)  # (B, T) on the CPU
    early = max(o.min_tokens for o in options)  # steps at which some row may not stop yet
    vocab = logits.shape[-1]
    limited = any(o.vocab_limit is not None and o.vocab_limit < vocab for o in options)
    for step in range(steps):
        allowed = _within_vocab(logits, rows) if limited else logits
        token = _sample(_without_early_stops(allowed, rows, step) if step < early else allowed,
                        rows, uniforms[:, step])  # (B,)
        tokens[rows.index, step] = token
        logprobs[rows.index, step] = torch.log_softmax(logits, dim=-1).gather(
            -1, token[:, None])[:, 0]
        is_stop = (token[:, None] == rows.stops).any(dim=-1)  # (B,)
        done = is_stop | (rows.max_tokens <= step + 1)
        if bool(done.any()):
            lengths[rows.index[done]] = step + 1
            stopped[rows.index[done]] = is_stop[done]
            keep = (~done).nonzero()[:, 0]
            if keep.numel() == 0:
                break
            rows, token = rows.select(keep), token[keep]
            uniforms = uniforms.index_select(0, keep.cpu())
            decoder.keep(keep)
        logits = decoder.step(token)
    return [(ids[:length], lps[:length], stop)
            for ids, lps, length, stop in zip(tokens.tolist(), logprobs.tolist(),
                                              lengths.tolist(), stopped.tolist(), strict=True)]


def _prefill(decoder: Decoder, prompts: Sequence[list[int]], capacity: int,
             device: torch.device) -> Tensor:
    """Prefill each distinct prompt once (a group's samples share theirs), then give every row
    its prompt's cache; returns (B, V) next-token logits."""
    distinct: dict[tuple[int, ...], int] = {}
    owner = [distinct.setdefault(tuple(prompt), len(distinct)) for prompt in prompts]
    longest = max(len(prompt) for prompt in distinct)
    input_ids = torch.zeros((len(distinct), longest), dtype=torch.long)  # (P, L) left-padded
    mask = torch.zeros_like(input_ids)  # (P, L)
    for row, prompt in enumerate(distinct):
        input_ids[row, longest - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[row, longest - len(prompt):] = 1
    logits = decoder.prefill(input_ids.to(device), mask.to(device), capacity)  # (P, V)
    rows = torch.tensor(owner, device=device)  # (B,)
    decoder.keep(rows)
    return logits.index_select(0, rows)


def _rows(options: Sequence[SamplingOptions], device: torch.device) -> _Rows:
    stop_width = max(1, max(len(o.stop_token_ids) for o in options))
    stops = torch.full((len(options), stop_width), -1, dtype=torch.long)
    for row, o in enumerate(options):
        stops[row, :len(o.stop_token_ids)] = torch.tensor(o.stop_token_ids, dtype=torch.long)
    greedy = [o.temperature == 0.0 for o in options]
    generators = [None if g else torch.Generator().manual_seed(
        o.seed if o.seed is not None else secrets.randbits(63))
        for g, o in zip(greedy, options, strict=True)]
    return _Rows(
        index=torch.arange(len(options)),
        temperature=torch.tensor([1.0 if g else o.temperature for g, o in zip(greedy, options)]),
        greedy=torch.tensor(greedy), top_k=torch.tensor([o.top_k for o in options]),
        top_p=torch.tensor([o.top_p for o in options], dtype=torch.float32),
        max_tokens=torch.tensor([o.max_tokens for o in options]),
        min_tokens=torch.tensor([o.min_tokens for o in options]),
        vocab_limit=torch.tensor([o.vocab_limit if o.vocab_limit is not None else 1 << 62
                                  for o in options]),
        stops=stops, generators=generators).to(device)


def _within_vocab(logits: Tensor, rows: _Rows) -> Tensor:
    """(B, V) logits with each row's ids from its vocab_limit on masked."""
    columns = torch.arange(logits.shape[-1], device=logits.device)  # (V,)
    return logits.masked_fill(columns[None, :] >= rows.vocab_limit[:, None], float("-inf"))


def _without_early_stops(logits: Tensor, rows: _Rows, step: int) -> Tensor:
    """(B, V) logits with each row's stop ids masked while it is short of its min_tokens."""
    early = rows.min_tokens > step  # (B,)
    if not bool(early.any()):
        return logits
    masked = logits.clone()
    for row in early.nonzero()[:, 0].tolist():
        ids = rows.stops[row]
        masked[row, ids[ids >= 0]] = float("-inf")
    return masked


def _uniforms(generators: list[torch.Generator | None], steps: int) -> Tensor:
    """(B, T) each row's uniform draws, one per step, all drawn when decoding starts (0.5 for
    a greedy row, which draws nothing)."""
    return torch.stack([torch.full((steps,), 0.5, dtype=torch.float64) if generator is None
                        else uniform_draws(generator, steps) for generator in generators])


def _sample(logits: Tensor, rows: _Rows, uniforms: Tensor) -> Tensor:
    """(B,) one token per row of (B, V) float32 logits: greedy rows take the argmax, the
    others invert their uniform draw (B,) under their processed probabilities."""
    greedy = [generator is None for generator in rows.generators]
    if all(greedy):
        return logits.argmax(dim=-1)
    probs = processed_probs(logits, rows.temperature, rows.top_k, rows.top_p)  # (B, V)
    drawn = invert(probs, uniforms)  # (B,)
    return torch.where(rows.greedy, logits.argmax(dim=-1), drawn) if any(greedy) else drawn
