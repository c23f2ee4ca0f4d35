"""A lean batched decoder over a transformers causal LM's live weights: Llama (its RoPE
scalings too), Qwen2, Mistral and Gemma.

On a small model on CPU, the transformers forward spends almost all of a decode step in module
and Python overhead (about 3 ms for 32 rows of the demo Llama, of which the output matmul is
0.04 ms). `Decoder` does the same math, norm → RoPE → grouped-query attention → gated MLP, in
a few torch ops per layer (`DecoderWeights.layers_forward`), over a KV cache allocated once per
batch.

The weights are gathered from the model's parameters when a decoder is built (once per
generation call, `Decoder.of`), so an optimizer step is seen by the next call; a peft LoRA
policy's adapters are added into that gathered copy. Only configurations it reproduces exactly
are taken (`unsupported_reason` says why another is not); callers fall back to the torch engine
for the others. The math is the model's in eval mode (no dropout).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from inference.engines.decoder_weights import DecoderWeights, Unsupported

__all__ = ["Decoder", "Unsupported", "supports", "unsupported_reason"]


def unsupported_reason(model: Any) -> str | None:
    """Why ``model`` (a transformers model, or a peft model over one) is not one this decoder
    reproduces exactly, or None when it is."""
    try:
        DecoderWeights.of(model)
    except Unsupported as refusal:
        return str(refusal)
    return None


def supports(model: Any) -> bool:
    return unsupported_reason(model) is None


@dataclass
class _Cache:
    keys: list[Tensor]
    """Per layer, (B, Hkv, S, hd) the keys of every column written so far (RoPE applied)."""
    values: list[Tensor]
    """Per layer, (B, Hkv, S, hd)."""
    visible: Tensor
    """(B, S) bool: the column holds a real token (not left padding, not yet unwritten)."""
    positions: Tensor
    """(B,) the position of each row's next token (its real tokens so far)."""
    length: int = 0
    """Columns written."""


class Decoder:
    """Prefill then one-token steps for a batch of left-padded rows (float logits out)."""

    def __init__(self, weights: DecoderWeights) -> None:
        self.weights = weights
        self.cache: _Cache | None = None
        self._cos = self._sin = weights.embed.new_zeros((0, weights.head_dim))
        """(P, hd) cos and signed sin of positions 0..P-1 (`DecoderWeights.rope_tables`)."""

    @classmethod
    def of(cls, model: Any) -> Decoder:
        """A decoder over ``model``'s current weights (a transformers model, or a peft LoRA
        model over one); raises `Unsupported` for a model whose forward it would not
        reproduce."""
        return cls(DecoderWeights.of(model))

    @property
    def device(self) -> torch.device:
        return self.weights.embed.device

    def prefill(self, input_ids: Tensor, mask: Tensor, capacity: int) -> Tensor:
        """Run left-padded prompts, (B, L) ids and (B, L) mask (1 real, 0 padding), into a
        fresh cache of ``capacity`` columns; returns (B, V) float32 logits of each row's next
        token."""
        window = self.weights.window
        if window is not None and capacity > window:
            raise ValueError(f"{capacity} columns exceed the sliding window ({window})")
        rows, length = input_ids.shape
        device = input_ids.device
        real = mask.bool()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, L)
        shape = (rows, self.weights.kv_heads, capacity, self.weights.head_dim)
        embed = self.weights.embed
        self.cache = _Cache(
            keys=[embed.new_zeros(shape) for _ in self.weights.layers],
            values=[embed.new_zeros(shape) for _ in self.weights.layers],
            visible=torch.zeros((rows, capacity), dtype=torch.bool, device=device),
            positions=mask.sum(-1))
        self.cache.visible[:, :length] = real
        if self._cos.shape[0] < capacity:
            self._cos, self._sin = self.weights.rope_tables(capacity, device)
        causal = torch.ones((length, length), dtype=torch.bool, device=device).tril()
        # A padding query sees itself too, so no row of the mask is empty (an empty row's
        # softmax is NaN, which would reach real rows through the next layer's values).
        attend = (causal & real[:, None, :]) | torch.eye(length, dtype=torch.bool,
                                                         device=device)  # (B, L, L)
        hidden = self._forward(input_ids, positions, attend.unsqueeze(1), 0)  # (B, L, d)
        return self.weights.logits(hidden[:, -1])

    def step(self, tokens: Tensor) -> Tensor:
        """Append (B,) ``tokens``, one per row; returns (B, V) float32 next-token logits."""
        cache = self.cache
        assert cache is not None, "prefill first"
        column = cache.length
        cache.visible[:, column] = True
        attend = cache.visible[:, None, None, :column + 1]  # (B, 1, 1, S')
        hidden = self._forward(tokens[:, None], cache.positions[:, None], attend, column)
        cache.positions = cache.positions + 1
        return self.weights.logits(hidden[:, -1])

    def keep(self, rows: Tensor) -> None:
        """The cache rows ``rows`` (a (B',) index; a row may repeat) from now on, in order."""
        cache = self.cache
        assert cache is not None
        cache.keys = [k.index_select(0, rows) for k in cache.keys]
        cache.values = [v.index_select(0, rows) for v in cache.values]
        cache.visible = cache.visible.index_select(0, rows)
        cache.positions = cache.positions.index_select(0, rows)

    def _forward(self, input_ids: Tensor, positions: Tensor, mask: Tensor,
                 column: int) -> Tensor:
        """(B, T) ids at (B, T) positions, written to cache columns [column, column + T);
        mask: (B, 1, T, column + T) bool. Returns (B, T, d) final hidden states."""
        cache = self.cache
        assert cache is not None
        end = column + input_ids.shape[1]
        gqa = self.weights.heads != self.weights.kv_heads

        def attend(index: int, queries: Tensor, keys: Tensor, values: Tensor) -> Tensor:
            """(B, T, H, hd) queries, (B, T, Hkv, hd) keys and values → (B, T, H, hd)."""
            cached_keys, cached_values = cache.keys[index], cache.values[index]
            cached_keys[:, :, column:end] = keys.transpose(1, 2)
            cached_values[:, :, column:end] = values.transpose(1, 2)
            return F.scaled_dot_product_attention(
                queries.transpose(1, 2), cached_keys[:, :, :end], cached_values[:, :, :end],
                attn_mask=mask, enable_gqa=gqa).transpose(1, 2)

        cos = F.embedding(positions, self._cos).unsqueeze(2)  # (B, T, 1, hd)
        sin = F.embedding(positions, self._sin).unsqueeze(2)  # (B, T, 1, hd)
        hidden = self.weights.layers_forward(self.weights.embedding(input_ids), cos, sin,
                                             attend)  # (B, T, d)
        cache.length = end
        return hidden
