"""ReMax (Li et al. 2023, "ReMax: A Simple, Effective, and Efficient Reinforcement Learning
Method for Aligning Large Language Models").

REINFORCE whose baseline is the reward of the greedy response to the same prompt:
Â = r(x, y) − r(x, ŷ_greedy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from trainer.online.batch import RolloutBatch

if TYPE_CHECKING:
    from trainer.algorithms.registry import AdvantageOptions


def remax_advantages(rewards: Tensor, baseline_rewards: Tensor) -> Tensor:
    """r − r(greedy). rewards: (B,); baseline_rewards: (B,) reward of each prompt's greedy
    response. Returns (B,)."""
    return rewards - baseline_rewards


def estimate(batch: RolloutBatch, options: AdvantageOptions) -> Tensor:
    """(B,) sequence advantages from each response's return Σ_t r_t."""
    return remax_advantages(batch.token_rewards.sum(-1), batch.baseline_rewards)
