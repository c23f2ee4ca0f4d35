"""Batched KV caches whose rows join and leave between decode steps (continuous batching).

Rows are left-padded to a common length: every row's next token goes in the same column, and
the attention mask hides each row's padding. RoPE is applied before keys are cached, so padding
a cached row on the left does not move its positions; positions are passed explicitly.

`branch` scores many one-token continuations of each row at once (VAS's candidates) as a tree
of depth one: the k candidates sit side by side after their row's prefix, each attending to
the prefix and to itself, so a prefix is stored and read once rather than copied k times.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

Forward = Callable[..., Tensor]
"""``forward(input_ids, attention_mask, position_ids, past_key_values) -> (B, T, ·) outputs``;
a generation model's forward gives the last position's only, (B, 1, V): the engines read no
other, and a prompt's logits at every position would be (B, T, V) floats for nothing."""


Pairs = list[tuple[Tensor, Tensor]]
"""Each layer's (keys, values), both (B, H, L, D)."""


def _pairs(cache: DynamicCache) -> Pairs:
    return [(layer.keys, layer.values)  # type: ignore[union-attr,misc]
            for layer in cache.layers]


def _as_cache(pairs: Pairs) -> DynamicCache:
    """A DynamicCache holding these tensors themselves: its ``ddp_cache_data`` argument would
    copy every one of them (a cat onto an empty tensor), and caches are rebuilt every step."""
    cache = DynamicCache()
    for keys, values in pairs:
        layer = DynamicLayer()
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
        cache.layers.append(layer)
    return cache


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
        return KVBatch(_as_cache(pairs), mask[:, start:])

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
        return KVBatch(_as_cache(pairs), mask)

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


@dataclass
class Branches:
    """Rows of prefixes, each followed by up to K candidate tokens side by side (`branch`)."""

    pairs: Pairs
    """Each layer's (B, H, L + K, D) keys and values: the L prefix columns, then the K
    candidates' columns, candidate j of every row in column L + j."""
    mask: Tensor
    """(B, L) the prefixes' mask."""

    def advance(self, rows: Sequence[int], chosen: Sequence[int]) -> KVBatch:
        """``rows``' prefixes, in that order, each followed by its ``chosen`` candidate, with
        the columns that every one of them pads dropped."""
        device, length = self.mask.device, self.mask.shape[1]
        index = torch.tensor(list(rows), dtype=torch.long, device=device)  # (B',)
        mask = self.mask.index_select(0, index)  # (B', L)
        start = length - int(mask.sum(dim=-1).max())  # real tokens are contiguous, on the right
        column = length + torch.tensor(list(chosen), dtype=torch.long, device=device)  # (B',)
        pairs = [(torch.cat([k[index, :, start:length], k[index, :, column].unsqueeze(2)], 2),
                  torch.cat([v[index, :, start:length], v[index, :, column].unsqueeze(2)], 2))
                 for k, v in self.pairs]  # each (B', H, L - start + 1, D)
        mask = torch.cat([mask[:, start:], mask.new_ones((len(rows), 1))], dim=-1)
        return KVBatch(_as_cache(pairs), mask)

    def row(self, row: int, chosen: int | None) -> KVBatch:
        """One row's prefix, followed by its ``chosen``-th candidate unless None, without the
        left padding the other rows gave it."""
        if chosen is not None:
            return self.advance([row], [chosen])
        length = self.mask.shape[1]
        prefixes = [(k[:, :, :length], v[:, :, :length]) for k, v in self.pairs]  # views
        return KVBatch(_as_cache(prefixes), self.mask).select([row])


def branch(forward: Forward, prefixes: KVBatch, tokens: Sequence[Tensor]
           ) -> tuple[Branches, Tensor]:
    """Every row of ``prefixes`` extended by each of its candidate tokens, in one pass.

    tokens: a (k_i,) tensor of candidates per row. The candidates of a row share its position
    and each attends to the row's prefix and to itself only (a 4D mask), so the outputs are
    those of k_i separate one-token extensions. Returns the branches and the (Σ k_i, ·) outputs,
    row 0's candidates in order, then row 1's, and so on.
    """
    device = prefixes.mask.device
    cache = _as_cache(_pairs(prefixes.cache))  # grows here; ``prefixes`` keeps its own
    counts = [len(ids) for ids in tokens]
    width = max(counts)
    input_ids = torch.zeros((len(counts), width), dtype=torch.long, device=device)  # (B, K)
    for row, ids in enumerate(tokens):
        input_ids[row, :len(ids)] = ids.to(device)  # unused slots read token 0, self only
    visible = prefixes.mask.bool()[:, None, None, :].expand(-1, 1, width, -1)  # (B, 1, K, L)
    own = torch.eye(width, dtype=torch.bool, device=device).expand(len(counts), 1, width,
                                                                    width)  # (B, 1, K, K)
    outputs = forward(input_ids=input_ids, attention_mask=torch.cat([visible, own], dim=-1),
                      position_ids=prefixes.positions.expand(-1, width),
                      past_key_values=cache)  # (B, K, ·)
    keep = torch.arange(width, device=device) < torch.tensor(counts, device=device)[:, None]
    return Branches(_pairs(cache), prefixes.mask), outputs[keep]  # (Σ k_i, ·)
