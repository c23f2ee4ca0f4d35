"""TD(λ) for value models that score a whole completion once (Value Augmented Sampling).

A value model reads a sequence and gives one value per token: V_t = V(s_≤t), the expected
final reward of a completion whose text so far ends with token t. Per row, the trained
positions form one contiguous span (set in `mask`): the prompt's last token (the value before
anything is sampled) through the completion's last token. The reward R of the completion is
the only reward and arrives with the last token, so the value of the last state is R itself
and every earlier state bootstraps from the one after it, with the forward view of TD(λ)
(Sutton & Barto, 2nd ed., §12.1):

    G_t = R                                          t the last position of the span
    G_t = γ · ((1 − λ) · V_{t+1} + λ · G_{t+1})        otherwise (no reward before the end)

λ = 1 is Monte Carlo (G_t = γ^(T_last − t) · R, so R itself when γ = 1); λ = 0 is one-step TD
(G_t = γ · V_{t+1}). Values are the current model's, detached: the targets move with the model
(semi-gradient TD).
"""

from __future__ import annotations

import torch
from torch import Tensor

from trainer.algorithms.reductions import masked_count, masked_mean, masked_sum, masked_var


def lambda_returns(values: Tensor, rewards: Tensor, mask: Tensor, gamma: float,
                   lam: float) -> Tensor:
    """λ-return targets G_t for every position of each row's span; 0 outside it.

    values: (B, T) V(s_≤t) of the current model (detached by the caller or not: no gradient
    flows through the result). rewards: (B,) R of each row's completion. mask: (B, T), one
    contiguous span of set positions per row, at least one. Returns (B, T).
    """
    values, span = values.detach(), mask.bool()
    batch, length = values.shape
    returns = torch.zeros_like(values)  # (B, T)
    next_return = torch.zeros(batch, dtype=values.dtype, device=values.device)  # (B,) G_{t+1}
    next_value = torch.zeros_like(next_return)  # (B,) V_{t+1}
    next_in_span = torch.zeros(batch, dtype=torch.bool, device=values.device)  # (B,)
    rewards = rewards.to(values.dtype)
    for t in reversed(range(length)):
        bootstrap = gamma * ((1.0 - lam) * next_value + lam * next_return)  # (B,)
        # 1. the span's last position: the reward; 2. earlier ones: the λ-mixed bootstrap.
        target = torch.where(next_in_span, bootstrap, rewards)  # (B,)
        returns[:, t] = torch.where(span[:, t], target, torch.zeros_like(target))
        next_return, next_value, next_in_span = returns[:, t], values[:, t], span[:, t]
    return returns


def value_loss(values: Tensor, returns: Tensor, mask: Tensor,
               normalizer: float | None = None) -> Tensor:
    """Squared error (V_t − G_t)² summed over the mask, divided by `normalizer` (the step's
    trained positions when a step is split into micro-batches), else its token mean.

    values: (B, T) with gradient; returns: (B, T) targets; mask: (B, T). Returns a scalar.
    """
    squared_error = (values - returns.detach()) ** 2  # (B, T)
    if normalizer is None:
        return masked_mean(squared_error, mask)
    return masked_sum(squared_error, mask) / normalizer


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 − Var[G − V] / Var[G] over the mask: 1 is a perfect fit, 0 no better than the mean.

    values, returns, mask: (B, T) (or any one shape). Returns a scalar; 0 when the targets
    do not vary (where CleanRL gives nan, which a JSON metric cannot hold).
    """
    values, returns = values.detach(), returns.detach()
    target_variance = masked_var(returns, mask, unbiased=False)
    if masked_count(mask) == 0 or target_variance <= 0:
        return torch.zeros((), dtype=values.dtype, device=values.device)
    return 1.0 - masked_var(returns - values, mask, unbiased=False) / target_variance
