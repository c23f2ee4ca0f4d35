"""Masked reductions shared by every loss in `trainer/algorithms`.

A mask marks the positions that count (completion tokens, valid actions); everything else —
prompt tokens, padding — must not move a loss or a statistic. Masks may be bool or 0/1 floats.
Every loss reduces through these helpers so that "token mean" means the same thing everywhere.
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_sum(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of `values` where `mask` is set.

    values: (B, T) or any shape; mask: same shape as values.
    Returns a scalar when dim is None, else the sum over `dim` (e.g. (B,) for dim=-1).
    """
    # where(), not multiplication: a masked-out inf or nan must not leak into the sum.
    kept = torch.where(mask.bool(), values, torch.zeros_like(values))
    return kept.sum() if dim is None else kept.sum(dim=dim)


def masked_count(mask: Tensor, dim: int | None = None) -> Tensor:
    """Number of set positions in `mask`: a scalar when dim is None, else per `dim`."""
    counts = mask.bool().to(torch.float32)
    return counts.sum() if dim is None else counts.sum(dim=dim)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `values` over the positions where `mask` is set.

    values: (B, T) or any shape; mask: same shape. With dim=None every set position in the
    batch weighs the same (a token mean); with dim=-1 each row is averaged on its own, (B,).
    A row or batch with no set position gives 0 rather than nan.
    """
    total = masked_sum(values, mask, dim)
    count = masked_count(mask, dim).to(values.dtype)
    return total / count.clamp(min=1.0)


def masked_var(values: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of `values` over the set positions of `mask` (a scalar).

    values: (B, T); mask: (B, T). Bessel's correction when `unbiased` and more than one
    position is set.
    """
    mean = masked_mean(values, mask)
    squared_deviation = (values - mean) ** 2  # (B, T)
    variance = masked_mean(squared_deviation, mask)
    count = masked_count(mask)
    if unbiased and count > 1:
        variance = variance * count / (count - 1)
    return variance


def masked_whiten(values: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """Normalise `values` to unit variance (and zero mean if `shift_mean`) over the mask.

    values: (B, T); mask: (B, T). Returns (B, T); masked-out positions are transformed too
    but carry no meaning. Used by advantage normalisation in the RL losses.
    """
    mean = masked_mean(values, mask)
    variance = masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)  # (B, T)
    return whitened if shift_mean else whitened + mean
