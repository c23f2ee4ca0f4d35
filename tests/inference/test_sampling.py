"""Batched logit processing equals doing each row alone by the textbook definitions."""

from __future__ import annotations

import torch

from inference.sampling import processed_probs, sample_rows


def reference(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """One row: scale, keep the k likeliest, then the smallest prefix holding top_p of the mass."""
    probs = torch.softmax(logits / temperature, dim=-1)
    order = torch.argsort(probs, descending=True).tolist()
    kept = order[:top_k] if top_k > 0 else order
    mass = probs[kept] / probs[kept].sum()
    chosen, total = [], 0.0
    for token, p in zip(kept, mass.tolist()):
        if total >= top_p:
            break
        chosen.append(token)
        total += p
    out = torch.zeros_like(probs)
    out[chosen] = probs[chosen] / probs[chosen].sum()
    return out


def test_each_row_gets_its_own_temperature_top_k_and_top_p() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 40, generator=generator) * 3
    settings = [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.6), (0.5, 10, 0.3), (2.0, 1, 1.0)]
    got = processed_probs(logits, torch.tensor([s[0] for s in settings]),
                          torch.tensor([s[1] for s in settings]),
                          torch.tensor([s[2] for s in settings]))
    for row, (t, k, p) in enumerate(settings):
        torch.testing.assert_close(got[row], reference(logits[row], t, k, p))


def test_a_row_samples_the_same_tokens_whatever_its_neighbours() -> None:
    logits = torch.randn(3, 30, generator=torch.Generator().manual_seed(1))

    def draw(rows: list[int]) -> list[int]:
        generators = [torch.Generator().manual_seed(10 + r) for r in rows]
        return sample_rows(logits[rows], [1.0] * len(rows), [0] * len(rows), [1.0] * len(rows),
                           generators)

    together = draw([0, 1, 2])
    assert [draw([r])[0] for r in range(3)] == together
    greedy = sample_rows(logits, [0.0, 1.0, 0.0], [0, 0, 0], [1.0] * 3,
                         [torch.Generator().manual_seed(0) for _ in range(3)])
    assert greedy[0] == int(torch.argmax(logits[0])) and greedy[2] == int(torch.argmax(logits[2]))
