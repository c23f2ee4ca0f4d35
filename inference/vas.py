"""Value Augmented Sampling (Han et al. 2024, "Value Augmented Sampling for Language Model
Alignment and Personalization"), the decode-time step both engines share.

At each step the base model's top-k tokens are the candidates a; each value model i scores every
continuation, V_i(s⊕a); the values are centred across the k candidates and added to the base
logits with the request's weights:

    logits'(a) = logits(a) + Σ_i β_i · (V_i(s⊕a) − mean_k V_i(s⊕·))    for a in top-k,  −inf else

Temperature, top-p and sampling then apply to logits' as to any processed logits. With every
β_i = 0 this is exactly plain top-k, so the same seed gives the same tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor

DEFAULT_TOP_K = 20
"""k when a request asks for value guidance without setting top_k."""


def candidates(logits: Tensor, k: int) -> Tensor:
    """(k,) token ids of the k largest (V,) logits, in `torch.topk` order."""
    return torch.topk(logits, min(k, logits.shape[-1])).indices


def guided_logits(logits: Tensor, candidate_ids: Tensor, values: Tensor, betas: Tensor) -> Tensor:
    """(V,) steered logits.

    logits: (V,) base logits of the next token; candidate_ids: (k,) the top-k token ids;
    values: (M, k) V_i(s⊕a) for each of M value models; betas: (M,) their weights; both are
    moved to the logits' device.
    """
    values, betas = values.to(logits.device), betas.to(logits.device)
    centred = values - values.mean(dim=-1, keepdim=True)  # (M, k)
    bonus = (betas.unsqueeze(-1) * centred).sum(dim=0)  # (k,)
    steered = torch.full_like(logits, float("-inf"))
    return steered.scatter(-1, candidate_ids, logits[candidate_ids] + bonus.to(logits.dtype))
