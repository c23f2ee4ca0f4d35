"""NGRPO's advantage calibration (Nan et al. 2025, "NGRPO: Negative-enhanced Group Relative
Policy Optimization").

GRPO gives a group whose answers are all wrong (or all right) zero advantage, so it teaches
nothing. NGRPO adds one virtual sample with the maximum reward r_max to every group before
taking the mean and std, so an all-wrong group is pushed down:

    μ′ = (Σ_g r + r_max) / (G + 1),   σ′ = unbiased std of the G + 1 values,
    Â_i = (r_i − μ′) / (σ′ + 1e-6).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from trainer.algorithms.group import group_size, group_sum
from trainer.online.batch import RolloutBatch

if TYPE_CHECKING:
    from trainer.algorithms.registry import AdvantageOptions

def ngrpo_advantages(rewards: Tensor, group: Tensor, r_max: float = 1.0,
                     eps: float = 1e-6) -> Tensor:
    """(r − μ′) / (σ′ + eps) with one virtual r_max sample in every group.

    rewards: (B,); group: (B,) long prompt ids. Returns (B,).
    """
    size = group_size(group, rewards.dtype)  # (B,) G, before the virtual sample
    mean = (group_sum(rewards, group) + r_max) / (size + 1)  # (B,) μ′
    squared_deviation = group_sum((rewards - mean) ** 2, group) + (r_max - mean) ** 2  # (B,)
    std = (squared_deviation / size).sqrt()  # (B,) σ′: ÷ (G + 1 − 1)
    return (rewards - mean) / (std + eps)


def estimate(batch: RolloutBatch, options: AdvantageOptions) -> Tensor:
    """(B,) sequence advantages from each response's return Σ_t r_t."""
    return ngrpo_advantages(batch.token_rewards.sum(-1), batch.group, options.r_max)
