"""SuperHF (Mukobi et al. 2023, "SuperHF: Supervised Iterative Learning from Human Feedback").

Each step keeps the response the reward ranks best among a prompt's samples (the registry's
rollout filter) and fine-tunes on it: the loss is its negative log-likelihood, −log π(a_t|s_t)
on every token (every kept token's weight, its "advantage", is 1), plus the KL prior to the
base model the online loop adds with β.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from trainer.algorithms.policy_gradient import SurrogateTerms
from trainer.online.batch import RolloutBatch

if TYPE_CHECKING:
    from trainer.algorithms.registry import AdvantageOptions


def estimate(batch: RolloutBatch, options: AdvantageOptions) -> tuple[Tensor, Tensor]:
    """Weight 1 on every real token of the kept responses; no value targets."""
    ones = batch.mask.to(torch.float32)  # (B, T)
    return ones, torch.zeros_like(ones)


def supervised_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor,
                    clip_low: float, clip_high: float) -> SurrogateTerms:
    """−Â·log π_θ(a_t|s_t) per token (B, T): the NLL where Â = 1. Nothing is clipped; the
    ratio to the sampling policy is reported as PPO's is."""
    ratio = torch.exp(logprobs - old_logprobs.detach())  # (B, T)
    return SurrogateTerms(loss=-advantages * logprobs, ratio=ratio,
                          clipped=torch.zeros_like(ratio, dtype=torch.bool))
