"""Supervised fine-tuning loss: next-token cross-entropy on completion tokens only.

The loss is a token mean: every completion token in the optimizer step weighs the same,
whether the step is one batch or several gradient-accumulation micro-batches. A micro-batch
therefore divides its summed negative log-likelihood by the number of completion tokens in the
*whole step* (`normalizer`), not by its own count — the fix for the accumulation bug described
in https://unsloth.ai/blog/gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from trainer.algorithms.reductions import masked_count, masked_sum

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


def completion_token_count(labels: Tensor) -> int:
    """Number of trained (completion) tokens in a batch. labels: (B, T) unshifted."""
    shifted_labels = labels[:, 1:]  # (B, T-1)
    return int(masked_count(shifted_labels != IGNORE_INDEX).item())


def sft_loss(logits: Tensor, labels: Tensor, normalizer: float | None = None) -> Tensor:
    """Token-mean cross-entropy over completion tokens (a scalar).

    logits: (B, T, V); labels: (B, T) with IGNORE_INDEX on prompt and padding.
    normalizer: completion tokens in the whole optimizer step when this batch is one of several
    accumulation micro-batches; None divides by this batch's own count (a plain token mean).
    """
    nll, mask = token_nll(logits, labels)  # (B, T-1), (B, T-1)
    count = masked_count(mask).item() if normalizer is None else normalizer
    return masked_sum(nll, mask) / max(count, 1.0)
