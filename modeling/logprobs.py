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
