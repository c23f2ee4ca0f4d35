"""The online-RL algorithms, each a small record picked by name (DESIGN §4).

An algorithm is its advantage estimator and what its rollouts need; the online loop does the
rest. Adding one is a file with an `estimate(batch, options)` and a line in `ALGORITHMS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from trainer.algorithms import grpo, ngrpo, ppo, remax, rloo, superhf
from trainer.algorithms.policy_gradient import SurrogateTerms, clipped_surrogate
from trainer.online.batch import RolloutBatch


@dataclass(frozen=True)
class AdvantageOptions:
    gamma: float = 1.0
    """Discount γ of GAE."""
    lam: float = 0.95
    """GAE's λ: bias (0) against variance (1)."""
    scale_rewards: bool = True
    """GRPO divides by the group's std; False is Dr. GRPO."""
    r_max: float = 1.0
    """NGRPO's virtual sample reward: the highest reward the grader gives."""


AdvantageEstimator = Callable[[RolloutBatch, AdvantageOptions], tuple[Tensor, Tensor]]
"""(batch, options) → (Â (B, T), value targets (B, T))."""
PolicyLoss = Callable[[Tensor, Tensor, Tensor, float, float], SurrogateTerms]
"""(log π_θ, log π_old, Â, ε_low, ε_high), each (B, T) → per-token loss terms."""


@dataclass(frozen=True)
class Algorithm:
    name: str
    advantages: AdvantageEstimator
    needs_critic: bool = False
    needs_greedy_baseline: bool = False
    policy_loss: PolicyLoss = clipped_surrogate
    rollout_filter: tuple[str, int] | None = None
    """(strategy, keep) applied to every prompt's responses (SuperHF keeps its best one); a
    job's policy_filter (PF-PPO) is used otherwise."""
    needs_dpo_model: bool = False
    """Dense token rewards from a DPO-trained model's log-ratio (RTO)."""


def per_token(estimate: Callable[[RolloutBatch, AdvantageOptions], Tensor]) -> AdvantageEstimator:
    """Lift a sequence-level estimator (B,) to the token level: Â = a[:, None] on every real
    token, and no value targets (these algorithms have no critic)."""

    def advantages(batch: RolloutBatch, options: AdvantageOptions) -> tuple[Tensor, Tensor]:
        sequence_advantages = estimate(batch, options)  # (B,)
        mask = batch.mask.to(sequence_advantages.dtype)  # (B, T)
        return sequence_advantages[:, None] * mask, torch.zeros_like(mask)

    return advantages


ALGORITHMS: dict[str, Algorithm] = {
    "grpo": Algorithm("grpo", per_token(grpo.estimate)),
    "rloo": Algorithm("rloo", per_token(rloo.estimate)),
    "remax": Algorithm("remax", per_token(remax.estimate), needs_greedy_baseline=True),
    "ngrpo": Algorithm("ngrpo", per_token(ngrpo.estimate)),
    "ppo": Algorithm("ppo", ppo.estimate, needs_critic=True),
    "rto": Algorithm("rto", ppo.estimate, needs_critic=True, needs_dpo_model=True),
    "superhf": Algorithm("superhf", superhf.estimate,
                         policy_loss=superhf.supervised_loss, rollout_filter=("best", 1)),
}


def get_algorithm(name: str) -> Algorithm:
    """The algorithm called `name`; a ValueError naming the known ones otherwise."""
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {sorted(ALGORITHMS)}, got {name!r}")
    return ALGORITHMS[name]
