"""GRPO's group-relative advantage (DeepSeekMath, Shao et al. 2024, §4.1.2) and Dr. GRPO's
unscaled variant (Liu et al. 2025, "Understanding R1-Zero-Like Training").

Each prompt is answered G times; a response's advantage is its reward measured against the
others of its group, Â_i = (r_i − mean_g r) / (std_g r + ε), the same on every token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from trainer.algorithms.group import group_mean, group_std
from trainer.online.batch import RolloutBatch

if TYPE_CHECKING:
    from trainer.algorithms.registry import AdvantageOptions


def grpo_advantages(rewards: Tensor, group: Tensor, scale_rewards: bool = True,
                    eps: float = 1e-4) -> Tensor:
    """(r − mean_g) / (std_g + eps), std unbiased as TRL computes it; r − mean_g when not
    `scale_rewards` (Dr. GRPO: dividing by std over-weights groups that are almost solved).

    rewards: (B,); group: (B,) long prompt ids. Returns (B,).
    """
    centred = rewards - group_mean(rewards, group)  # (B,)
    if not scale_rewards:
        return centred
    return centred / (group_std(rewards, group, unbiased=True) + eps)


def estimate(batch: RolloutBatch, options: AdvantageOptions) -> Tensor:
    """(B,) sequence advantages from each response's return Σ_t r_t."""
    return grpo_advantages(batch.token_rewards.sum(-1), batch.group, options.scale_rewards)
