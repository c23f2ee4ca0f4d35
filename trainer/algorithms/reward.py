"""Reward-model losses and statistics, as pure tensor functions.

- Preference pairs train a scalar reward r(x, y) with the Bradley-Terry likelihood
  P(y_c ≻ y_r) = σ(r_c − r_r) (Ouyang et al. 2022, eq. 1), optionally with Llama 2's margin
  (Touvron et al. 2023, eq. 2): −log σ(r_c − r_r − m). TRL's auxiliary centring loss
  mean((r_c + r_r)²) keeps the rewards near zero (Eisenstein et al. 2023).
- Ratings rows train one head per objective by regression on the given scores; an objective a
  row does not rate is masked out.
- The implicit head has no head: r(x, y) = β·Σ_t log π(y_t | x, y_<t) over the response's
  tokens (`modeling.logprobs.response_logps`), minus the same sum under a reference when there is one — DPO's
  implicit reward (Rafailov et al. 2023, eq. 5) — trained with the same Bradley-Terry loss.

`REWARD_LOSSES` picks the loss by the kind of data, never an if-chain in the trainer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from trainer.algorithms.reductions import masked_count, masked_mean, masked_sum


def bradley_terry_loss(
    chosen: Tensor, rejected: Tensor, margin: float | Tensor | None = None
) -> Tensor:
    """Mean over pairs of −log σ(r_c − r_r − m) (a scalar).

    chosen: (B,) r(x, y_chosen); rejected: (B,) r(x, y_rejected); margin: None (m = 0), a
    float, or (B,) per pair.
    """
    logits = chosen - rejected  # (B,)
    if margin is not None:
        logits = logits - margin
    # logsigmoid, not log(sigmoid()): stays finite for large negative differences.
    return -F.logsigmoid(logits).mean()


def center_rewards_loss(chosen: Tensor, rejected: Tensor) -> Tensor:
    """mean((r_c + r_r)²) over pairs (a scalar); chosen, rejected: (B,)."""
    return ((chosen + rejected) ** 2).mean()


def pairwise_accuracy(chosen: Tensor, rejected: Tensor) -> Tensor:
    """Fraction of pairs with r_c > r_r (ties count as wrong); chosen, rejected: (B,)."""
    return (chosen > rejected).to(torch.float32).mean()


def mean_margin(chosen: Tensor, rejected: Tensor) -> Tensor:
    """Mean of r_c − r_r over pairs (a scalar); chosen, rejected: (B,)."""
    return (chosen - rejected).mean()


def regression_loss(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Masked mean squared error over every rated (row, objective) entry (a scalar).

    pred: (B, K) predicted scores; target: (B, K) given scores (any value where unrated);
    mask: (B, K) 1 where the row rates that objective.
    """
    return masked_mean((pred - target) ** 2, mask)


def per_objective_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """(K,) mean squared error of each objective over the rows that rate it (0 if none)."""
    return masked_mean((pred - target) ** 2, mask, dim=0)


def per_objective_correlation(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """(K,) Pearson correlation of prediction and score per objective, over rated rows.

    pred, target, mask: (B, K). An objective with fewer than two rated rows, or with no
    variance in prediction or score, gets 0.
    """
    count = masked_count(mask, dim=0)  # (K,)
    pred_centred = pred - masked_mean(pred, mask, dim=0)  # (B, K)
    target_centred = target - masked_mean(target, mask, dim=0)  # (B, K)
    covariance = masked_sum(pred_centred * target_centred, mask, dim=0)  # (K,)
    pred_norm = masked_sum(pred_centred**2, mask, dim=0).sqrt()  # (K,)
    target_norm = masked_sum(target_centred**2, mask, dim=0).sqrt()  # (K,)
    denominator = pred_norm * target_norm
    defined = (count >= 2) & (denominator > 0)
    return torch.where(defined, covariance / denominator.clamp(min=1e-12), torch.zeros_like(count))


REWARD_LOSSES: dict[str, Callable[..., Tensor]] = {
    "preference": bradley_terry_loss,
    "ratings": regression_loss,
}
"""The training loss for each kind of reward data (see `trainer.reward_data.data_kind`)."""
