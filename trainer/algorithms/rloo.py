"""REINFORCE Leave-One-Out (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style
Optimization for Learning from Human Feedback in LLMs").

Each of a prompt's G responses is baselined by the mean reward of the other G − 1:
Â_i = r_i − mean_{j≠i} r_j = G/(G − 1) · (r_i − mean_g r).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from trainer.algorithms.group import group_mean, group_size
from trainer.online.batch import RolloutBatch

if TYPE_CHECKING:
    from trainer.algorithms.registry import AdvantageOptions


def rloo_advantages(rewards: Tensor, group: Tensor) -> Tensor:
    """r_i − mean of the other rewards of i's group; 0 in a group of one (no other sample).

    rewards: (B,); group: (B,) long prompt ids. Returns (B,).
    """
    size = group_size(group, rewards.dtype)  # (B,)
    centred = rewards - group_mean(rewards, group)  # (B,)
    scaled = centred * size / (size - 1).clamp(min=1.0)
    return torch.where(size > 1, scaled, torch.zeros_like(scaled))


def estimate(batch: RolloutBatch, options: AdvantageOptions) -> Tensor:
    """(B,) sequence advantages from each response's return Σ_t r_t."""
    return rloo_advantages(batch.token_rewards.sum(-1), batch.group)
