"""Response logits of a policy with each distinct prompt run once and no padding.

An online-RL step samples `group_size` responses to each prompt, so a padded or packed batch
runs every prompt through the model `group_size` times, with gradient, and the demo's prompts
are about half of its tokens. Here the prompts' tokens and the responses' tokens are laid end
to end in one (N, d) stream, each distinct prompt once and no padding, so every matmul and
elementwise op runs on real tokens only. Attention alone needs the rows back: each layer
scatters queries, keys and values into padded tensors, where a prompt attends causally to
itself and a response to its prompt's keys and values (shared by its group) and causally to
itself, then gathers the outputs back into the stream. The keys and values of a prompt are
read by every response of its group, so backward sums their gradients, which is the gradient
of running the prompt once per response.

The layers are `DecoderWeights.layers_forward`, the batch decoder's, over the same gathered
weights (a LoRA adapter's B·A added in, with gradient): it takes the architectures that decoder
reproduces (Llama, Qwen2, Mistral, Gemma), in training as well as in eval mode where nothing
drops out (`unsupported_reason`); `Policy` falls back to transformers' own forward for the
others.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inference.local import DecoderWeights, Unsupported

__all__ = ["refusal_of", "shared_prompt_logits", "supports_shared_prompt", "unsupported_reason"]

_REASONS: weakref.WeakKeyDictionary[Any, str | None] = weakref.WeakKeyDictionary()
"""Per model object: why it is refused, or None (checked once; gone with the model)."""


def supports_shared_prompt(model: Any) -> bool:
    """Whether `shared_prompt_logits` gives ``model``'s own logits (checked once per model)."""
    return refusal_of(model) is None


def refusal_of(model: Any) -> str | None:
    """`unsupported_reason` of ``model``, checked once per model object."""
    if model not in _REASONS:
        _REASONS[model] = unsupported_reason(model)
    return _REASONS[model]


def unsupported_reason(model: Any) -> str | None:
    """Why ``model``'s forward is not one this module reproduces, or None."""
    try:
        DecoderWeights.of(model)
    except Unsupported as refusal:
        return str(refusal)
    if float(getattr(model.config, "attention_dropout", 0.0) or 0.0) > 0:
        return "attention dropout"
    for module in model.modules():  # a LoRA adapter's dropout, or any other
        if isinstance(module, nn.Dropout) and module.p > 0:
            return f"dropout (p={module.p}) in {type(module).__name__}"
    return None


def shared_prompt_logits(model: Any, sequences: Tensor, attention_mask: Tensor,
                         response_length: int, temperature: float = 1.0) -> Tensor:
    """(B, T, V) logits of each response token (zeros past a row's end), divided by
    ``temperature``, for rows laid out as `modeling.logprobs.response_logits` takes them: a
    prompt left-padded to P then a response right-padded to T = ``response_length``.
    sequences, attention_mask: (B, S). Rows whose prompts are equal share one run of it."""
    weights = DecoderWeights.of(model, differentiable=torch.is_grad_enabled())
    layout = _Layout.of(sequences, attention_mask, response_length)
    if weights.window is not None and int(layout.positions.max()) >= weights.window:
        raise ValueError(f"a sequence is longer than the sliding window ({weights.window})")
    cos, sin = (table.unsqueeze(1) for table in weights.rope_at(layout.positions))  # (N,1,hd)
    gqa = weights.heads != weights.kv_heads

    def attend(index: int, queries: Tensor, keys: Tensor, values: Tensor) -> Tensor:
        return layout.attention(queries, keys, values, gqa)  # (N, H, hd)

    hidden = weights.layers_forward(weights.embedding(layout.ids), cos, sin, attend)  # (N, d)
    predicting = hidden.index_select(0, layout.predicting)  # (M, d)
    logits = weights.logits(predicting)  # (M, V) float32
    if temperature != 1.0:
        logits = logits / temperature
    out = logits.new_zeros((layout.rows, response_length, logits.shape[-1]))  # (B, T, V)
    return out.index_put((layout.target_rows, layout.target_columns), logits)


@dataclass
class _Layout:
    """Where each token of the (N,) stream comes from and goes to. The stream is every
    distinct prompt's real tokens (Np of them), then every response's real tokens but its
    last (Nr), whose outputs predict its next tokens."""

    ids: Tensor  # (N,) token ids
    positions: Tensor  # (N,) each token's position in its sequence
    rows: int  # B
    prompt_at: tuple[Tensor, Tensor]  # (Np,) each: a prompt token's (prompt, column)
    prompt_real: Tensor  # (G, P) bool: the distinct prompts' real columns
    response_at: tuple[Tensor, Tensor]  # (Nr,) each: a response token's (row, column)
    response_width: int  # Tr: the most response tokens fed in for one row
    group: Tensor  # (B,) each row's distinct prompt
    predicting: Tensor  # (M,) stream index of each output that predicts a response token
    target_rows: Tensor  # (M,) the row of the token it predicts
    target_columns: Tensor  # (M,) its column among the response's T

    @property
    def n_prompt(self) -> int:
        return int(self.prompt_at[0].shape[0])

    @classmethod
    def of(cls, sequences: Tensor, attention_mask: Tensor, response_length: int) -> _Layout:
        rows, width = sequences.shape
        device = sequences.device
        prompt_columns = width - response_length  # P
        real = attention_mask.bool()
        prompt_ids, prompt_real = sequences[:, :prompt_columns], real[:, :prompt_columns]
        if not bool(prompt_real[:, -1].all()):
            raise ValueError("every row needs a prompt that ends in column P - 1")
        # Rows with the same prompt (ids and padding) share it; the key is made of both.
        key = torch.cat([prompt_ids, prompt_real.long()], dim=1)  # (B, 2P)
        distinct, group = torch.unique(key, dim=0, return_inverse=True)  # (G, 2P), (B,)
        distinct_real = distinct[:, prompt_columns:].bool()  # (G, P)
        distinct_ids = distinct[:, :prompt_columns]  # (G, P)
        prompt_lengths = distinct_real.sum(-1)  # (G,)
        g_index, p_column = distinct_real.nonzero(as_tuple=True)  # (Np,) each
        p_position = p_column - (prompt_columns - prompt_lengths[g_index])  # from 0

        lengths = real[:, prompt_columns:].sum(-1)  # (B,) response lengths, at least 1
        inputs = (lengths - 1).clamp(min=0)  # response tokens fed in: all but the last
        fed = torch.arange(max(response_length - 1, 1), device=device) < inputs[:, None]
        r_row, r_column = fed.nonzero(as_tuple=True)  # (Nr,) each
        r_ids = sequences[r_row, prompt_columns + r_column]
        r_position = prompt_lengths[group[r_row]] + r_column
        n_prompt = int(g_index.shape[0])

        # Outputs that predict a response token: the prompt's last token predicts token 0
        # of each row of its group, response token t - 1 predicts token t.
        last = (torch.cumsum(prompt_lengths, 0) - 1)  # (G,) stream index of each last token
        predicting = torch.cat([last[group], n_prompt + torch.arange(r_row.shape[0],
                                                                     device=device)])
        target_rows = torch.cat([torch.arange(rows, device=device), r_row])
        target_columns = torch.cat([torch.zeros(rows, dtype=torch.long, device=device),
                                    r_column + 1])
        return cls(ids=torch.cat([distinct_ids[g_index, p_column], r_ids]),
                   positions=torch.cat([p_position, r_position]), rows=rows,
                   prompt_at=(g_index, p_column), prompt_real=distinct_real,
                   response_at=(r_row, r_column), response_width=int(fed.shape[1]),
                   group=group, predicting=predicting, target_rows=target_rows,
                   target_columns=target_columns)

    def attention(self, queries: Tensor, keys: Tensor, values: Tensor, gqa: bool) -> Tensor:
        """(N, H, hd) attention outputs of the stream's (N, H, hd) queries and (N, Hkv, hd)
        keys and values: a prompt over its own earlier tokens, a response over its prompt and
        its own earlier tokens."""
        n = self.n_prompt
        groups, width = self.prompt_real.shape
        prompt_shape = (int(groups), int(width))  # (G, P)
        response_shape = (self.rows, self.response_width)  # (B, Tr)
        p_q, p_k, p_v = (self._padded(t[:n], self.prompt_at, prompt_shape)
                         for t in (queries, keys, values))  # (G, heads, P, hd)
        r_q, r_k, r_v = (self._padded(t[n:], self.response_at, response_shape)
                         for t in (queries, keys, values))  # (B, heads, Tr, hd)
        prompt_out = F.scaled_dot_product_attention(p_q, p_k, p_v, attn_mask=self.prompt_mask,
                                                    enable_gqa=gqa)  # (G, H, P, hd)
        response_keys = torch.cat([p_k.index_select(0, self.group), r_k], dim=2)
        response_values = torch.cat([p_v.index_select(0, self.group), r_v], dim=2)
        response_out = F.scaled_dot_product_attention(
            r_q, response_keys, response_values, attn_mask=self.response_mask,
            enable_gqa=gqa)  # (B, H, Tr, hd)
        return torch.cat([prompt_out.transpose(1, 2)[self.prompt_at],
                          response_out.transpose(1, 2)[self.response_at]])

    @staticmethod
    def _padded(stream: Tensor, at: tuple[Tensor, Tensor], shape: tuple[int, int]) -> Tensor:
        """(R, heads, L, hd) from the (n, heads, hd) stream tokens at (row, column) ``at``
        of a (R, L) layout; zeros elsewhere."""
        padded = stream.new_zeros((*shape, *stream.shape[1:]))  # (R, L, heads, hd)
        return padded.index_put(at, stream).transpose(1, 2)

    @cached_property
    def prompt_mask(self) -> Tensor:
        """(G, 1, P, P): causal over the prompt's real tokens; a padding query sees itself
        (no empty row, whose softmax would be NaN)."""
        width, device = self.prompt_real.shape[1], self.prompt_real.device
        causal = torch.ones((width, width), dtype=torch.bool, device=device).tril()
        eye = torch.eye(width, dtype=torch.bool, device=device)
        return ((causal & self.prompt_real[:, None, :]) | eye).unsqueeze(1)

    @cached_property
    def response_mask(self) -> Tensor:
        """(B, 1, Tr, P + Tr): the prompt's real tokens, then the response's own tokens up to
        the query's column (a padding query sees them too: never an empty row)."""
        width, device = self.response_width, self.prompt_real.device
        causal = torch.ones((width, width), dtype=torch.bool, device=device).tril()
        prompt = self.prompt_real.index_select(0, self.group)  # (B, P)
        return torch.cat([prompt[:, None, :].expand(-1, width, -1),
                          causal.expand(self.rows, -1, -1)], dim=2).unsqueeze(1)
