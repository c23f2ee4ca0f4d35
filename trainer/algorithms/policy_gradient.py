"""Policy-gradient pieces shared by every online algorithm: the clipped surrogate, KL estimators,
loss aggregations and diagnostics.

All tensors are response-level: (B, T) with `mask` (B, T) on the real response tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from trainer.algorithms.reductions import masked_count, masked_mean, masked_sum

# ---- KL(π‖π_ref) estimators, from samples of π (http://joschu.net/blog/kl-approx.html) ----


def _k1(log_ratio: Tensor) -> Tensor:
    return log_ratio


def _k2(log_ratio: Tensor) -> Tensor:
    return 0.5 * log_ratio**2


def _k3(log_ratio: Tensor) -> Tensor:
    # (r − 1) − log r with r = π_ref/π = exp(−log_ratio): unbiased and never negative.
    # Bounded as verl and OpenRLHF bound it: a log-ratio below −20 (a token the policy gives
    # e^-20 of the reference's probability) would make exp overflow float32 past −88.7 and
    # its gradient inf; the estimate is capped at K3_BOUND, where the gradient stops.
    log_ratio = log_ratio.clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND)
    return (torch.expm1(-log_ratio) + log_ratio).clamp(max=K3_BOUND)


LOG_RATIO_BOUND = 20.0
"""|log π − log π_ref| beyond which k3 is taken at the bound (exp(20) ≈ 4.9e8, finite)."""
K3_BOUND = 10.0
"""The largest per-token k3 estimate (verl's low_var_kl clamps it to the same)."""


KL_ESTIMATORS: dict[str, Callable[[Tensor], Tensor]] = {"k1": _k1, "k2": _k2, "k3": _k3}


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor,
               estimator: Literal["k1", "k2", "k3"], mask: Tensor | None = None) -> Tensor:
    """Per-token estimate of KL(π‖π_ref) with log_ratio = log π(a_t|s_t) − log π_ref(a_t|s_t):
    k1 = log_ratio, k2 = ½·log_ratio², k3 = exp(−log_ratio) − 1 + log_ratio (bounded, `_k3`).

    The log-ratio is zeroed where ``mask`` is not set before the estimator sees it: padding
    carries whatever log-probability the forward gave it against a reference of 0, and an
    overflow there would reach the gradient as 0·inf = nan through any masked sum.

    Differentiated as a loss term (GRPO's way, ``kl_in: loss``), on samples of π_θ: k3's
    gradient is E[(1 − π_ref/π_θ)·∇log π_θ] = ∇KL(π_ref‖π_θ), the *forward* KL (mass-covering:
    it pulls up tokens the reference likes that the policy has dropped); k2's is
    E[log(π_θ/π_ref)·∇log π_θ] = ∇KL(π_θ‖π_ref), the reverse KL that PPO-RLHF's reward penalty
    optimises; k1's is E[∇log π_θ] = 0, so k1 in the loss does nothing (refused at create).

    logprobs, ref_logprobs, mask: (B, T). Returns (B, T).
    """
    log_ratio = logprobs - ref_logprobs
    if mask is not None:
        log_ratio = torch.where(mask.bool(), log_ratio, torch.zeros_like(log_ratio))
    return KL_ESTIMATORS[estimator](log_ratio)


# ---- loss aggregations over a minibatch that may be split into micro-batches ----


@dataclass(frozen=True)
class LossScale:
    """Denominators of the WHOLE minibatch, so that per-micro-batch losses sum to its loss."""

    tokens: float  # real response tokens in the minibatch (at least 1)
    sequences: float  # sequences (rows) in the minibatch
    max_new_tokens: int  # the generation budget L of Dr. GRPO's constant normaliser

    @classmethod
    def of(cls, mask: Tensor, max_new_tokens: int) -> LossScale:
        """The scale of the minibatch whose response mask (B, T) is `mask`."""
        return cls(tokens=max(float(masked_count(mask)), 1.0), sequences=float(mask.shape[0]),
                   max_new_tokens=max_new_tokens)


def token_mean(values: Tensor, mask: Tensor, scale: LossScale) -> Tensor:
    """Σ_{b,t} values·mask / tokens: every token of the minibatch weighs the same."""
    return masked_sum(values, mask) / scale.tokens


def sequence_mean(values: Tensor, mask: Tensor, scale: LossScale) -> Tensor:
    """Σ_b (mean over row b's tokens) / sequences: GRPO's per-sequence mean (Shao et al. 2024)."""
    return masked_mean(values, mask, dim=-1).sum() / scale.sequences


def constant(values: Tensor, mask: Tensor, scale: LossScale) -> Tensor:
    """Σ_{b,t} values·mask / (sequences · max_new_tokens): no length bias (Dr. GRPO,
    Liu et al. 2025, "Understanding R1-Zero-Like Training")."""
    return masked_sum(values, mask) / (scale.sequences * scale.max_new_tokens)


LOSS_AGGREGATIONS: dict[str, Callable[[Tensor, Tensor, LossScale], Tensor]] = {
    "token_mean": token_mean,
    "sequence_mean": sequence_mean,
    "constant": constant,
}


# ---- the clipped surrogate (PPO, Schulman et al. 2017; clip-higher as in DAPO) ----


@dataclass
class SurrogateTerms:
    loss: Tensor  # (B, T) max(pg_loss1, pg_loss2)
    ratio: Tensor  # (B, T) π_θ(a_t|s_t) / π_old(a_t|s_t)
    clipped: Tensor  # (B, T) bool: the clipped term was the larger (no gradient through ratio)


def clipped_surrogate(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor,
                      clip_low: float, clip_high: float) -> SurrogateTerms:
    """pg_loss1 = −Â·ratio, pg_loss2 = −Â·clamp(ratio, 1 − clip_low, 1 + clip_high),
    loss = max(pg_loss1, pg_loss2).

    logprobs: (B, T) log π_θ with gradient; old_logprobs: (B, T) log π_old; advantages: (B, T).
    """
    ratio = torch.exp(logprobs - old_logprobs.detach())  # (B, T)
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    return SurrogateTerms(loss=torch.maximum(pg_loss1, pg_loss2), ratio=ratio,
                          clipped=pg_loss2 > pg_loss1)


def approx_kl(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor) -> Tensor:
    """Token mean of (ratio − 1) − log ratio, the k3 estimate of KL(π_old‖π_θ) (a scalar).

    logprobs, old_logprobs, mask: (B, T).
    """
    log_ratio = (logprobs - old_logprobs).detach()  # (B, T)
    return masked_mean(torch.expm1(log_ratio) - log_ratio, mask)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """H = −Σ softmax(z)·log softmax(z) over the last dim. logits: (..., V). Returns (...,).

    log softmax(z) = z − max z − logsumexp(z − max z): exact for logits in the thousands.
    """
    return entropy_from_log_probs(torch.log_softmax(logits, dim=-1))


def entropy_from_log_probs(log_probs: Tensor) -> Tensor:
    """H = −Σ p·log p over the last dim, from log p (..., V) already computed. Returns (...,).

    A -inf log-probability (masked vocabulary) has p = 0 and adds 0, not 0·(−inf) = nan.
    Outside autograd (the entropy as a metric) the product is formed in place and its nans
    zeroed: three passes over (..., V) where the differentiable form makes five. That also
    zeroes a nan the log-probabilities bring in themselves: the metric then reads finite
    while the policy loss, built from the same log-probabilities, reads nan."""
    if torch.is_grad_enabled() and log_probs.requires_grad:
        # log p zeroed before the product, not the product after it: where(−inf, 0, p·log p)
        # gives 0 but back-propagates 0·(−inf) = nan into the masked entry's row
        plogp = log_probs.exp() * log_probs.masked_fill(log_probs.isneginf(), 0.0)
    else:  # p·log p is finite or 0·(−inf): nan_to_num meets no infinity to change
        plogp = log_probs.exp().mul_(log_probs).nan_to_num_(nan=0.0)
    return -plogp.sum(dim=-1)
