"""Supervised fine-tuning loss: next-token cross-entropy on completion tokens only.

The loss is a token mean: every completion token in the optimizer step weighs the same,
whether the step is one batch or several gradient-accumulation micro-batches. A micro-batch
therefore divides its summed negative log-likelihood by the number of completion tokens in the
*whole step* (`normalizer`), not by its own count — the fix for the accumulation bug described
in https://unsloth.ai/blog/gradient.
"""

from __future__ import annotations

from torch import Tensor

from modeling.logprobs import IGNORE_INDEX, token_nll
from trainer.algorithms.reductions import masked_count, masked_sum


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
