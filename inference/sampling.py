"""Per-row logit processing and sampling, shared by every decode loop of the torch engine.

Order, as vLLM applies it: logits processors (VAS) → temperature → top-k → top-p → sample.
Each row draws from its own `torch.Generator`, so a request's tokens depend on its seed alone,
not on which other requests share its batch.
"""

from __future__ import annotations

import torch
from torch import Tensor


def keep_top_k(logits: Tensor, k: int) -> Tensor:
    """(V,) logits with everything outside the k largest set to -inf (k <= 0 keeps all).

    Exactly k survive, ties broken by `torch.topk`, so VAS's k candidates and plain top-k
    sampling keep the same set.
    """
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kept = torch.full_like(logits, float("-inf"))
    values, indices = torch.topk(logits, k)
    return kept.scatter(-1, indices, values)


def keep_top_p(logits: Tensor, top_p: float) -> Tensor:
    """(V,) logits keeping the smallest set of most likely tokens whose mass reaches top_p."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # mass of strictly more likely tokens
    drop_sorted = mass_before >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_token(logits: Tensor, *, temperature: float, top_k: int, top_p: float,
                 generator: torch.Generator | None) -> int:
    """One token id from (V,) float32 logits (already steered by any logits processor)."""
    if temperature == 0.0:
        return int(torch.argmax(logits))
    processed = keep_top_p(keep_top_k(logits / temperature, top_k), top_p)
    probs = torch.softmax(processed, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def top_logprobs(logprobs: Tensor, n: int) -> dict[int, float]:
    """The n most likely token ids of (V,) log-probabilities."""
    if n <= 0:
        return {}
    values, indices = torch.topk(logprobs, min(n, logprobs.shape[-1]))
    return {int(i): float(v) for i, v in zip(indices.tolist(), values.tolist())}
