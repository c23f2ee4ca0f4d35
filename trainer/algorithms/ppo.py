"""PPO's advantage estimator and value loss (Schulman et al. 2017), with the PPO-max value
clipping of Zheng et al. 2023 ("Secrets of RLHF in Large Language Models Part I: PPO").

Generalised Advantage Estimation (Schulman et al. 2016, "High-Dimensional Continuous Control
Using Generalized Advantage Estimation"), on right-padded responses:

    δ_t = r_t + γ · V(s_{t+1}) · [t + 1 is real] − V(s_t)
    Â_t = δ_t + γλ · Â_{t+1},      returns R_t = Â_t + V(s_t)

The state after a response's last token is terminal (value 0).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from trainer.online.batch import RolloutBatch

if TYPE_CHECKING:
    from trainer.algorithms.registry import AdvantageOptions


def gae(token_rewards: Tensor, values: Tensor, mask: Tensor, gamma: float,
        lam: float) -> tuple[Tensor, Tensor]:
    """GAE advantages and value targets, both 0 where `mask` is False.

    token_rewards: (B, T) r_t; values: (B, T) V(s_t) of the critic before the update;
    mask: (B, T) right-padded real tokens. Returns (advantages (B, T), returns (B, T)).
    """
    real = mask.bool()
    token_rewards, values = token_rewards.detach(), values.detach()
    advantages = torch.zeros_like(values)  # (B, T)
    next_value = torch.zeros_like(values[:, 0])  # (B,) V(s_{t+1})
    next_advantage = torch.zeros_like(next_value)  # (B,) Â_{t+1}
    next_real = torch.zeros_like(real[:, 0])  # (B,) t + 1 is a real token
    for t in reversed(range(values.shape[1])):
        continues = next_real.to(values.dtype)  # (B,) 0 past the last real token: terminal
        delta = token_rewards[:, t] + gamma * next_value * continues - values[:, t]
        advantage = delta + gamma * lam * next_advantage * continues
        advantages[:, t] = torch.where(real[:, t], advantage, torch.zeros_like(advantage))
        next_value, next_advantage, next_real = values[:, t], advantages[:, t], real[:, t]
    returns = torch.where(real, advantages + values, torch.zeros_like(values))
    return advantages, returns


def clipped_value_loss(values: Tensor, old_values: Tensor, returns: Tensor,
                       clip: float | None) -> Tensor:
    """½ · max((V − R)², (clamp(V, V_old − c, V_old + c) − R)²); ½ · (V − R)² when `clip`
    is None. values: (B, T) with gradient; old_values, returns: (B, T). Returns (B, T),
    unreduced: the caller aggregates over the mask."""
    returns = returns.detach()
    unclipped = (values - returns) ** 2  # (B, T)
    if clip is None:
        return 0.5 * unclipped
    old_values = old_values.detach()
    clipped_values = torch.clamp(values, old_values - clip, old_values + clip)  # (B, T)
    return 0.5 * torch.maximum(unclipped, (clipped_values - returns) ** 2)


def estimate(batch: RolloutBatch, options: AdvantageOptions) -> tuple[Tensor, Tensor]:
    """Token-level (Â, returns), each (B, T), from the critic's values."""
    return gae(batch.token_rewards, batch.values, batch.mask, options.gamma, options.lam)
