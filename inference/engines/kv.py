"""Batched KV caches whose rows join and leave between decode steps (continuous batching).

Rows are left-padded to a common length: every row's next token goes in the same column, and
the attention mask hides each row's padding. RoPE is applied before keys are cached, so padding
a cached row on the left does not move its positions; positions are passed explicitly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import DynamicCache, PreTrainedModel

Forward = Callable[..., Tensor]
"""``forward(input_ids, attention_mask, position_ids, past_key_values) -> (B, T, ·) outputs``."""


def _pairs(cache: DynamicCache) -> list[tuple[Tensor, Tensor]]:
    return [(layer.keys, layer.values)  # type: ignore[union-attr,misc]
            for layer in cache.layers]  # each (B, H, L, D)


@dataclass
class KVBatch:
    cache: DynamicCache
    mask: Tensor
    """(B, L) 1 for a real token, 0 for left padding."""

    @property
    def size(self) -> int:
        return int(self.mask.shape[0])

    @property
    def positions(self) -> Tensor:
        """(B, 1) the position of each row's next token."""
        return self.mask.sum(dim=-1, keepdim=True)

    def select(self, rows: Sequence[int]) -> KVBatch:
        """Only ``rows``, in that order, with columns that every kept row pads dropped."""
        index = torch.tensor(list(rows), dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, index)  # (B', L)
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else mask.shape[1]
        pairs = [(k.index_select(0, index)[:, :, start:], v.index_select(0, index)[:, :, start:])
                 for k, v in _pairs(self.cache)]
        return KVBatch(DynamicCache(ddp_cache_data=pairs), mask[:, start:])

    def repeat(self, times: int | Sequence[int]) -> KVBatch:
        """Each row repeated in place: ``times`` times, or ``times[i]`` times for row i."""
        counts = times if isinstance(times, int) else torch.tensor(list(times),
                                                                   device=self.mask.device)
        pairs = [(k.repeat_interleave(counts, 0), v.repeat_interleave(counts, 0))
                 for k, v in _pairs(self.cache)]
        return KVBatch(DynamicCache(ddp_cache_data=pairs), self.mask.repeat_interleave(counts, 0))

    @staticmethod
    def stack(batches: Sequence[KVBatch]) -> KVBatch:
        """Every batch's rows, in order, in one batch left-padded to the longest."""
        if len(batches) == 1:
            return batches[0]
        length = max(batch.mask.shape[1] for batch in batches)
        layers = zip(*(_pairs(batch.cache) for batch in batches))
        pairs = [(torch.cat([_pad_left(k, length) for k, _ in layer]),
                  torch.cat([_pad_left(v, length) for _, v in layer])) for layer in layers]
        mask = torch.cat([_pad_left(batch.mask, length) for batch in batches])
        return KVBatch(DynamicCache(ddp_cache_data=pairs), mask)

    def merge(self, other: KVBatch) -> KVBatch:
        """This batch's rows then ``other``'s, the shorter left-padded to the longer."""
        return KVBatch.stack([self, other])


def _pad_left(tensor: Tensor, length: int) -> Tensor:
    """Zeros on the left of the sequence axis (-2 for (B, H, L, D) keys, -1 for (B, L) masks)."""
    axis = -2 if tensor.dim() == 4 else -1
    missing = length - tensor.shape[axis]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[axis] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=axis)


def prefill(forward: Forward, rows: list[list[int]], pad_id: int,
            device: torch.device) -> tuple[KVBatch, Tensor]:
    """Run prompts (left-padded into one batch); returns their cache and (B, ·) last outputs."""
    longest = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)  # (B, L)
    mask = torch.zeros_like(input_ids)  # (B, L)
    for row, ids in enumerate(rows):
        input_ids[row, longest - len(ids):] = torch.tensor(ids, dtype=torch.long)
        mask[row, longest - len(ids):] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, L)
    cache = DynamicCache()
    outputs = forward(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                      past_key_values=cache)  # (B, L, ·)
    return KVBatch(cache, mask), outputs[:, -1]


def extend(forward: Forward, batch: KVBatch, tokens: Tensor) -> tuple[KVBatch, Tensor]:
    """Append one token per row, (B,) ``tokens``; returns the grown batch and (B, ·) outputs."""
    positions = batch.positions  # (B, 1): real tokens so far = the new token's position
    mask = torch.cat([batch.mask, batch.mask.new_ones((batch.size, 1))], dim=-1)  # (B, L+1)
    outputs = forward(input_ids=tokens.view(-1, 1).to(batch.mask.device), attention_mask=mask,
                      position_ids=positions, past_key_values=batch.cache)  # (B, 1, ·)
    return KVBatch(batch.cache, mask), outputs[:, -1]


def causal_lm_forward(model: PreTrainedModel) -> Forward:
    def forward(**inputs: Tensor | DynamicCache) -> Tensor:
        return model(**inputs, use_cache=True).logits.float()  # type: ignore[no-any-return]
    return forward


def branch(forward: Forward, prefixes: Sequence[KVBatch],
           tokens: Sequence[Tensor]) -> tuple[KVBatch, Tensor]:
    """Every prefix extended by each of its candidate tokens, all in one batched pass.

    prefixes: batches of one row each; tokens: a (k_i,) tensor of candidates per prefix. Returns
    the grown batch, whose rows are prefix 0's candidates in order, then prefix 1's, and so on,
    and its (Σ k_i, ·) outputs, in the same order.
    """
    grown = KVBatch.stack(prefixes).repeat([len(ids) for ids in tokens])
    return extend(forward, grown, torch.cat(list(tokens)))
