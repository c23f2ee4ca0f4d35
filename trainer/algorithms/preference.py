"""Offline preference losses (the DPO family), as pure functions of per-pair log-ratios.

With h_w = Σ_t log π_θ/π_ref over the chosen response y_w and h_l the same over the rejected
y_l, and the margin m = h_w − h_l:

- `sigmoid` — DPO (Rafailov et al. 2023, eq. 7): −log σ(β·m − δ), δ an optional offset (ODPO;
  the implicit reward-model head's Llama-2 margin); with label smoothing ε it is
  −(1 − ε)·log σ(β·m − δ) − ε·log σ(−(β·m − δ)), cDPO (Mitchell 2023), hence `conservative`;
- `ipo` — IPO (Azar et al. 2023, eq. 17): (m − 1/(2β))²;
- `tdpo` — TDPO (Zeng et al. 2024, eqs. 19 and 21): −log σ(β·m − α·β·(SeqKL(y_l) − SeqKL(y_w)))
  with SeqKL(y) = Σ_t KL(π_ref(·|s_t) ‖ π_θ(·|s_t)) over the response's tokens; α = 1 is TDPO1,
  and TDPO2 stops the gradient through SeqKL(y_w) (with α = 0.5 in the paper).

Every loss returns one value per pair, (B,); the caller averages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from trainer.algorithms.reductions import masked_sum


@dataclass(frozen=True)
class PairLogRatios:
    chosen: Tensor  # (B,) h_w = Σ_t log π_θ(y_w,t|s_t) − log π_ref(y_w,t|s_t)
    rejected: Tensor  # (B,) h_l, the same over y_l
    chosen_seq_kl: Tensor | None = None  # (B,) SeqKL(x, y_w; π_ref ‖ π_θ), TDPO only
    rejected_seq_kl: Tensor | None = None  # (B,) SeqKL(x, y_l; π_ref ‖ π_θ), TDPO only

    @property
    def margin(self) -> Tensor:
        """(B,) m = h_w − h_l."""
        return self.chosen - self.rejected


@dataclass(frozen=True)
class PreferenceOptions:
    beta: float
    label_smoothing: float = 0.0
    """ε of cDPO; 0 is plain DPO."""
    offset: float = 0.0
    """δ subtracted from β·m (a margin the chosen response must win by)."""
    tdpo_alpha: float = 1.0
    tdpo_stop_gradient: bool = False


def sigmoid_loss(pairs: PairLogRatios, options: PreferenceOptions) -> Tensor:
    """(B,) −(1 − ε)·log σ(β·m − δ) − ε·log σ(δ − β·m)."""
    logits = options.beta * pairs.margin - options.offset  # (B,)
    eps = options.label_smoothing
    return -(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)


def ipo_loss(pairs: PairLogRatios, options: PreferenceOptions) -> Tensor:
    """(B,) (m − 1/(2β))²: the margin regressed onto a finite target, so it cannot grow
    without bound on deterministic preferences as DPO's does."""
    return (pairs.margin - 1.0 / (2.0 * options.beta)) ** 2


def tdpo_loss(pairs: PairLogRatios, options: PreferenceOptions) -> Tensor:
    """(B,) −log σ(β·m − α·β·(SeqKL(y_l) − SeqKL(y_w))), SeqKL(y_w) detached for TDPO2."""
    if pairs.chosen_seq_kl is None or pairs.rejected_seq_kl is None:
        raise ValueError("the tdpo loss needs both responses' sequential KL")
    chosen_kl = pairs.chosen_seq_kl
    if options.tdpo_stop_gradient:
        chosen_kl = chosen_kl.detach()
    delta = options.beta * (pairs.rejected_seq_kl - chosen_kl)  # (B,)
    return -F.logsigmoid(options.beta * pairs.margin - options.tdpo_alpha * delta)


def sequential_kl(reference_logits: Tensor, logits: Tensor, mask: Tensor) -> Tensor:
    """(N,) Σ_t KL(π_ref(·|s_t) ‖ π_θ(·|s_t)) over each row's masked positions.

    reference_logits, logits: (N, T, V) at the positions that predict the response tokens;
    mask: (N, T) bool, the response's tokens.
    """
    return masked_sum(token_kl(reference_logits, logits), mask, dim=-1)


def token_kl(reference_logits: Tensor, logits: Tensor) -> Tensor:
    """(N, T) KL(π_ref(·|s_t) ‖ π_θ(·|s_t)) at every position; logits (N, T, V)."""
    reference_logps = torch.log_softmax(reference_logits.float(), dim=-1)  # (N, T, V)
    logps = torch.log_softmax(logits.float(), dim=-1)  # (N, T, V)
    return (reference_logps.exp() * (reference_logps - logps)).sum(-1)


PREFERENCE_LOSSES: dict[str, Callable[[PairLogRatios, PreferenceOptions], Tensor]] = {
    "sigmoid": sigmoid_loss,
    "conservative": sigmoid_loss,
    "ipo": ipo_loss,
    "tdpo": tdpo_loss,
}
"""The `dpo` job's `loss` names; "conservative" is the sigmoid loss with label smoothing."""
