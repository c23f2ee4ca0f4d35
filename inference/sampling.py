"""Per-row logit processing and sampling, shared by every decode loop of the torch engine.

Order, as vLLM applies it: logits processors (VAS) → temperature → top-k → top-p → sample.
Each row draws from its own `torch.Generator`, so a request's tokens depend on its seed alone,
not on which other requests share its batch.
"""

from __future__ import annotations

import torch
from torch import Tensor


def processed_probs(logits: Tensor, temperature: Tensor, top_k: Tensor,
                    top_p: Tensor) -> Tensor:
    """(B, V) sampling probabilities of (B, V) logits, every row with its own settings.

    temperature: (B,) > 0; top_k: (B,) 0 = no cut; top_p: (B,) in (0, 1]. One sort serves both
    cuts: top-k keeps the first k sorted tokens, top-p those whose preceding mass is < top_p.
    """
    scaled = logits / temperature.unsqueeze(-1)  # (B, V)
    if bool((top_k == 0).all()) and bool((top_p >= 1.0).all()):
        return torch.softmax(scaled, dim=-1)  # no cut on any row: no sort either
    sorted_logits, order = torch.sort(scaled, dim=-1, descending=True)  # (B, V)
    rank = torch.arange(scaled.shape[-1], device=scaled.device).unsqueeze(0)  # (1, V)
    k = torch.where(top_k > 0, top_k, scaled.shape[-1]).unsqueeze(-1)  # (B, 1)
    sorted_logits = sorted_logits.masked_fill(rank >= k, float("-inf"))
    probs = torch.softmax(sorted_logits, dim=-1)  # (B, V)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    drop = (mass_before >= top_p.unsqueeze(-1)) & (rank > 0)  # the likeliest always stays
    probs = torch.softmax(sorted_logits.masked_fill(drop, float("-inf")), dim=-1)
    return torch.zeros_like(probs).scatter(-1, order, probs)


def sample_rows(logits: Tensor, temperature: list[float], top_k: list[int], top_p: list[float],
                generators: list[torch.Generator]) -> list[int]:
    """One token per row of (B, V) float32 logits; temperature 0 rows take the argmax."""
    greedy = [t == 0.0 for t in temperature]
    tokens = torch.argmax(logits, dim=-1).tolist()
    if all(greedy):
        return [int(t) for t in tokens]
    probs = processed_probs(
        logits, torch.tensor([t if t > 0 else 1.0 for t in temperature]),
        torch.tensor(top_k), torch.tensor(top_p, dtype=logits.dtype))
    for row, generator in enumerate(generators):
        if not greedy[row]:
            tokens[row] = torch.multinomial(probs[row], 1, generator=generator)
    return [int(t) for t in tokens]


def top_logprobs(logprobs: Tensor, n: int) -> dict[int, float]:
    """The n most likely token ids of (V,) log-probabilities."""
    if n <= 0:
        return {}
    values, indices = torch.topk(logprobs, min(n, logprobs.shape[-1]))
    return {int(i): float(v) for i, v in zip(indices.tolist(), values.tolist())}
