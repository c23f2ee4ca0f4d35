"""Batched logit processing equals doing each row alone by the textbook definitions."""

from __future__ import annotations

import torch

from inference.sampling import invert, processed_probs, sample_rows, uniform_draws


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


def test_inversion_gives_each_token_its_probability_and_never_a_zero_one() -> None:
    """Evenly spaced uniforms land on each token in proportion to its probability; tokens of
    probability 0 (a top-k cut, a masked tail) are never drawn, not even at u next to 1."""
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.25, 0.25, 0.0, 0.0],
                          [0.1, 0.2, 0.3, 0.4, 0.0, 0.0, 0.0]])
    count = 10_000
    uniforms = (torch.arange(count, dtype=torch.float64) + 0.5) / count
    for row in range(2):
        drawn = invert(probs[row].expand(count, -1), uniforms)
        frequency = torch.bincount(drawn, minlength=7).double() / count
        torch.testing.assert_close(frequency, probs[row].double(), atol=1e-4, rtol=0)
    edge = torch.tensor([0.0, 1.0 - 2.0**-53], dtype=torch.float64)
    assert invert(probs[:1].expand(2, -1), edge).tolist() == [1, 4]
    assert invert(probs[1:].expand(2, -1), edge).tolist() == [0, 3]


def test_a_seed_gives_the_same_tokens_drawn_one_step_at_a_time_or_all_at_once() -> None:
    """The torch engine draws one uniform a token; a rollout draws a row's at once."""
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(2))
    one_at_a_time = [sample_rows(logits[step:step + 1], [1.0], [0], [1.0], [generator])[0]
                     for generator in [torch.Generator().manual_seed(7)] for step in range(6)]
    at_once = invert(torch.softmax(logits, dim=-1),
                     uniform_draws(torch.Generator().manual_seed(7), 6)).tolist()
    assert one_at_a_time == at_once
