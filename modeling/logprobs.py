"""Log-probabilities of tokens under a causal LM, the same for training and for scoring.

Labels are unshifted (B, T) token ids with IGNORE_INDEX where a position is not read (prompt,
padding); the prediction at position t is for the token at t + 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100
"""Label of a position that is not trained on (prompt, padding); PyTorch's default ignore_index."""


def shift_for_next_token(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Align the prediction at position t with the token at t + 1.

    logits: (B, T, V); labels: (B, T). Returns logits (B, T-1, V) and labels (B, T-1).
    """
    return logits[:, :-1, :], labels[:, 1:]


def token_nll(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token negative log-likelihood −log π_θ(y_t | y_<t) and the mask of trained tokens.

    logits: (B, T, V) unshifted model outputs; labels: (B, T) token ids, IGNORE_INDEX where
    not trained. Returns nll (B, T-1), 0 at ignored positions, and mask (B, T-1) bool.
    """
    shifted_logits, shifted_labels = shift_for_next_token(logits, labels)
    batch_size, length, vocab_size = shifted_logits.shape
    # Half-precision logits are upcast: a log-softmax over a large vocabulary needs fp32.
    dtype = torch.promote_types(shifted_logits.dtype, torch.float32)
    nll = F.cross_entropy(
        shifted_logits.reshape(-1, vocab_size).to(dtype),  # (B*(T-1), V)
        shifted_labels.reshape(-1),  # (B*(T-1),)
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(batch_size, length)  # (B, T-1)
    return nll, shifted_labels != IGNORE_INDEX


def response_logps(logits: Tensor, labels: Tensor) -> Tensor:
    """(N,) Σ_t log π(y_t | x, y_<t) over each row's labelled (response) tokens, in float32.

    logits: (N, T, V) unshifted causal-LM outputs; labels: (N, T) the token id on response
    tokens, IGNORE_INDEX on prompt and padding. A row with no labelled token sums to 0.
    """
    nll, _ = token_nll(logits, labels)  # (N, T-1), 0 where not labelled
    return -nll.sum(dim=-1)


def response_token_counts(labels: Tensor) -> Tensor:
    """(N,) labelled tokens per row that `response_logps` sums over. labels: (N, T) unshifted."""
    return (labels[:, 1:] != IGNORE_INDEX).to(torch.float32).sum(dim=-1)


def gather_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """(B, T) log softmax(logits)[tokens] in float32. logits: (B, T, V); tokens: (B, T)."""
    logps = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    return logps.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def left_padded_positions(attention_mask: Tensor) -> Tensor:
    """(B, S) position ids of left-padded rows: 0 at each row's first real token (and on its
    padding, which attends to nothing that matters)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def response_logits(model: torch.nn.Module, sequences: Tensor, attention_mask: Tensor,
                    response_length: int, temperature: float = 1.0) -> Tensor:
    """(B, T, V) logits of each response token, divided by ``temperature`` (the distribution
    the tokens were sampled from), for rows laid out as a left-padded prompt followed by a
    right-padded response of ``response_length`` = T columns.

    sequences, attention_mask: (B, S). The logits at column P - 1 + t predict response token t.
    """
    outputs = model(input_ids=sequences, attention_mask=attention_mask,
                    position_ids=left_padded_positions(attention_mask), use_cache=False,
                    logits_to_keep=response_length + 1)
    logits = outputs.logits[:, :-1]  # (B, T, V): the last position predicts nothing we sampled
    return logits / temperature if temperature != 1.0 else logits
