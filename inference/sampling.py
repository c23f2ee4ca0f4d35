"""Per-row logit processing and sampling, shared by every decode loop of the torch engine.

Order, as vLLM applies it: logits processors (VAS) → temperature → top-k → top-p → sample.
Each row draws from its own `torch.Generator`, so a request's tokens depend on its seed alone,
not on which other requests share its batch.

A sampled token is drawn by inversion: one uniform double u from the row's generator per
token, and the token is the first whose cumulative probability exceeds u times the row's total
(`invert`). The k-th token a seed samples is decided by the k-th double its generator gives,
in every decode loop (the torch engine's steps, `inference.engines.static_batch`'s rollouts).
`torch.multinomial` would draw V exponentials per token instead: with a 16k vocabulary, a
GRPO rollout of 32 rows × 16 tokens spent about a tenth of a step drawing them.
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
    sampled = [row for row, g in enumerate(greedy) if not g]
    uniforms = torch.cat([uniform_draws(generators[row], 1) for row in sampled])  # (S,)
    drawn = invert(probs[sampled], uniforms).tolist()
    for row, token in zip(sampled, drawn, strict=True):
        tokens[row] = token
    return [int(t) for t in tokens]


def uniform_draws(generator: torch.Generator, count: int) -> Tensor:
    """(count,) the generator's next uniform doubles in [0, 1), one per token to sample: a
    generator's draws are one stream, so drawing k at once gives the next k one at a time
    would."""
    return torch.rand(count, generator=generator, dtype=torch.float64)


def invert(probs: Tensor, uniforms: Tensor) -> Tensor:
    """(B,) one token per row of (B, V) probabilities: the first id whose cumulative
    probability exceeds the row's u (B,) times its total. A token of probability 0 is never
    drawn (its cumulative equals its predecessor's)."""
    cumulative = torch.cumsum(probs, dim=-1, dtype=torch.float64)  # (B, V)
    target = (uniforms.to(cumulative.device) * cumulative[:, -1]).unsqueeze(-1)  # (B, 1)
    tokens = torch.searchsorted(cumulative, target, right=True)[:, 0]  # (B,)
    # u·total rounds up to the total only at u within 2^-53 of 1: the last id drawn from
    last = probs.shape[-1] - 1 - (probs.flip(-1) > 0).int().argmax(dim=-1)  # (B,)
    return torch.minimum(tokens, last)


def top_logprobs(logprobs: Tensor, n: int) -> dict[int, float]:
    """The n most likely token ids of (V,) log-probabilities."""
    if n <= 0:
        return {}
    values, indices = torch.topk(logprobs, min(n, logprobs.shape[-1]))
    return {int(i): float(v) for i, v in zip(indices.tolist(), values.tolist())}
