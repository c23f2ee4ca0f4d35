"""TD(λ) targets and explained variance against plain Python loops, on random spans."""

from __future__ import annotations

import random

import pytest
import torch

from trainer.algorithms.td_lambda import explained_variance, lambda_returns, value_loss


def reference_returns(values: list[float], start: int, end: int, reward: float, gamma: float,
                      lam: float) -> list[float]:
    """The forward view written out: G_t = Σ_n (1−λ)λ^(n−1) G_t^(n) + λ^(N−1) G_t^(N), where
    G_t^(n) = γ^n V_{t+n} for a bootstrap inside the span and γ^(N-1) R once the span ends."""
    targets = [0.0] * len(values)
    for t in range(start, end + 1):
        steps_to_end = end - t  # N − 1: n-step returns that still bootstrap from a value
        total = 0.0
        for n in range(1, steps_to_end + 1):
            total += (1 - lam) * lam ** (n - 1) * gamma**n * values[t + n]
        total += lam**steps_to_end * gamma**steps_to_end * reward
        targets[t] = total
    return targets


def random_case(seed: int, batch: int = 5, length: int = 9):
    rng = random.Random(seed)
    values = torch.randn(batch, length, generator=torch.Generator().manual_seed(seed))
    rewards = torch.tensor([rng.uniform(-2, 2) for _ in range(batch)])
    mask = torch.zeros(batch, length, dtype=torch.bool)
    spans = []
    for row in range(batch):
        start = rng.randrange(length)
        end = rng.randrange(start, length)  # a span of one position is allowed
        mask[row, start : end + 1] = True
        spans.append((start, end))
    return values, rewards, mask, spans


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0), (1.0, 0.0),
                                        (0.8, 0.0), (0.97, 1.0)])
def test_lambda_returns_match_the_forward_view_loop(seed: int, gamma: float, lam: float) -> None:
    values, rewards, mask, spans = random_case(seed)
    returns = lambda_returns(values, rewards, mask, gamma, lam)
    for row, (start, end) in enumerate(spans):
        expected = reference_returns(values[row].tolist(), start, end, rewards[row].item(),
                                     gamma, lam)
        assert returns[row].tolist() == pytest.approx(expected, abs=1e-5)


def test_monte_carlo_targets_are_the_reward_everywhere_in_the_span() -> None:
    values, rewards, mask, _ = random_case(11)
    returns = lambda_returns(values, rewards, mask, gamma=1.0, lam=1.0)
    expected = torch.where(mask, rewards[:, None].expand_as(values), torch.zeros_like(values))
    assert torch.allclose(returns, expected)


def test_one_step_td_bootstraps_from_the_next_value() -> None:
    values, rewards, mask, spans = random_case(12)
    returns = lambda_returns(values, rewards, mask, gamma=1.0, lam=0.0)
    for row, (start, end) in enumerate(spans):
        assert returns[row, start:end].tolist() == pytest.approx(
            values[row, start + 1 : end + 1].tolist())
        assert returns[row, end].item() == pytest.approx(rewards[row].item())
    assert returns[~mask].eq(0).all()


def test_targets_carry_no_gradient_and_the_loss_is_the_masked_token_mean() -> None:
    values, rewards, mask, _ = random_case(13)
    values.requires_grad_(True)
    returns = lambda_returns(values, rewards, mask, gamma=1.0, lam=0.95)
    assert not returns.requires_grad
    loss = value_loss(values, returns, mask)
    errors = [(values[r, c].item() - returns[r, c].item()) ** 2
              for r in range(mask.shape[0]) for c in range(mask.shape[1]) if mask[r, c]]
    assert loss.item() == pytest.approx(sum(errors) / len(errors), rel=1e-5)
    split = value_loss(values[:2], returns[:2], mask[:2], normalizer=len(errors)) + value_loss(
        values[2:], returns[2:], mask[2:], normalizer=len(errors))
    assert split.item() == pytest.approx(loss.item(), rel=1e-5)
    loss.backward()
    assert values.grad is not None and values.grad[~mask].eq(0).all()


@pytest.mark.parametrize("seed", range(4))
def test_explained_variance_matches_its_definition(seed: int) -> None:
    values, rewards, mask, _ = random_case(seed)
    returns = lambda_returns(values, rewards, mask, gamma=1.0, lam=0.9)
    predicted = [values[r, c].item() for r, c in mask.nonzero().tolist()]
    target = [returns[r, c].item() for r, c in mask.nonzero().tolist()]

    def variance(xs: list[float]) -> float:
        mean = sum(xs) / len(xs)
        return sum((x - mean) ** 2 for x in xs) / len(xs)

    expected = 1 - variance([t - p for t, p in zip(target, predicted)]) / variance(target)
    assert explained_variance(values, returns, mask).item() == pytest.approx(expected, rel=1e-4)
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    constant = torch.ones_like(values)
    assert explained_variance(values, constant, mask).item() == 0.0
