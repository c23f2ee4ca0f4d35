"""Per-group statistics for group-relative baselines (GRPO, RLOO, NGRPO).

A group is the set of sampled responses to one prompt, named by `group: (B,) long` ids. Rows of
a group need not be adjacent and groups may differ in size. Every function returns the group's
statistic on each of its rows, (B,), computed with scatter adds (no loop over rows).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _dense_ids(group: Tensor) -> tuple[Tensor, int]:
    """Group ids renumbered 0..n_groups−1, (B,), and n_groups."""
    unique, dense = torch.unique(group, return_inverse=True)
    return dense, int(unique.numel())


def group_sum(values: Tensor, group: Tensor) -> Tensor:
    """Σ_{j in g(i)} values_j on every row i. values: (B,); group: (B,). Returns (B,)."""
    dense, n_groups = _dense_ids(group)
    totals = torch.zeros(n_groups, dtype=values.dtype, device=values.device)  # (n_groups,)
    return totals.index_add(0, dense, values)[dense]


def group_size(group: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """G_{g(i)}: the number of rows in row i's group. group: (B,). Returns (B,) of `dtype`."""
    return group_sum(torch.ones(group.shape, dtype=dtype, device=group.device), group)


def group_mean(values: Tensor, group: Tensor) -> Tensor:
    """Mean of `values` over row i's group, on every row. values: (B,); group: (B,)."""
    return group_sum(values, group) / group_size(group, values.dtype)


def group_std(values: Tensor, group: Tensor, unbiased: bool = True) -> Tensor:
    """Standard deviation of `values` over row i's group, on every row (B,).

    With `unbiased`, Bessel's correction (÷ (G − 1)); a group of one has std 0, not nan.
    """
    size = group_size(group, values.dtype)  # (B,)
    squared_deviation = (values - group_mean(values, group)) ** 2  # (B,)
    denominator = (size - 1).clamp(min=1.0) if unbiased else size
    return (group_sum(squared_deviation, group) / denominator).sqrt()
