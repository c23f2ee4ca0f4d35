"""The clipped surrogate, KL estimators, loss aggregations and diagnostics on hand-worked
tensors and against plain Python loops."""

from __future__ import annotations

import math
from typing import Literal

import pytest
import torch

from trainer.algorithms.policy_gradient import (
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    LossScale,
    approx_kl,
    clipped_surrogate,
    entropy_from_log_probs,
    entropy_from_logits,
    kl_penalty,
)


def test_kl_estimators_on_hand_values() -> None:
    logprobs = torch.tensor([[math.log(0.5), math.log(0.25)]], dtype=torch.float64)
    ref_logprobs = torch.tensor([[math.log(0.25), math.log(0.5)]], dtype=torch.float64)
    log2 = math.log(2)
    expected: dict[Literal["k1", "k2", "k3"], list[float]] = {
        "k1": [log2, -log2],
        "k2": [0.5 * log2**2, 0.5 * log2**2],
        "k3": [0.5 - 1 + log2, 2 - 1 - log2],  # r − 1 − log r with r = π_ref/π
    }
    for name, values in expected.items():
        assert kl_penalty(logprobs, ref_logprobs, name).tolist()[0] == pytest.approx(values)
    assert set(KL_ESTIMATORS) == {"k1", "k2", "k3"}


def test_k1_and_k3_are_unbiased_and_k3_is_never_negative() -> None:
    generator = torch.Generator().manual_seed(0)
    policy = torch.randn(6, generator=generator, dtype=torch.float64).log_softmax(-1)  # (V,)
    reference = torch.randn(6, generator=generator, dtype=torch.float64).log_softmax(-1)
    exact_kl = (policy.exp() * (policy - reference)).sum()
    for name in ("k1", "k3"):  # type: Literal["k1", "k3"]
        # The expectation under π, summed exactly over the vocabulary, is KL(π‖π_ref).
        expectation = (policy.exp() * kl_penalty(policy, reference, name)).sum()
        assert expectation.item() == pytest.approx(exact_kl.item(), rel=1e-9)
    log_ratios = torch.randn(50, 40, generator=generator) * 5
    assert kl_penalty(log_ratios, torch.zeros_like(log_ratios), "k3").min() >= 0
    assert kl_penalty(log_ratios, torch.zeros_like(log_ratios), "k1").min() < 0


def test_clipped_surrogate_with_asymmetric_range() -> None:
    advantages = torch.tensor([[1.0, 1.0, 1.0, -1.0, -1.0, -1.0]], dtype=torch.float64)
    ratio = torch.tensor([[1.5, 1.25, 0.5, 0.5, 0.85, 1.2]], dtype=torch.float64)
    old_logprobs = torch.full_like(ratio, -1.0)
    logprobs = (old_logprobs + ratio.log()).requires_grad_(True)
    terms = clipped_surrogate(logprobs, old_logprobs, advantages, clip_low=0.1, clip_high=0.3)
    # 1.5 → clipped at 1.3; 1.25 is inside the high side; A < 0 clips below 0.9 only.
    assert terms.loss.tolist()[0] == pytest.approx([-1.3, -1.25, -0.5, 0.9, 0.9, 1.2])
    assert terms.clipped.tolist()[0] == [True, False, False, True, True, False]
    assert terms.ratio.tolist()[0] == pytest.approx(ratio.tolist()[0])
    terms.loss.sum().backward()
    assert logprobs.grad is not None
    expected_grad = torch.where(terms.clipped, torch.zeros_like(ratio), -advantages * ratio)
    assert logprobs.grad.tolist()[0] == pytest.approx(expected_grad.tolist()[0])
    symmetric = clipped_surrogate(logprobs, old_logprobs, advantages, 0.1, 0.1)
    assert symmetric.clipped.tolist()[0] == [True, True, False, True, True, False]


def ragged_case(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(6, 5, generator=generator, dtype=torch.float64)  # (B, T)
    lengths = [5, 1, 3, 0, 4, 2]
    mask = torch.arange(5)[None, :] < torch.tensor(lengths)[:, None]  # (B, T) right-padded
    return values, mask


def test_aggregations_match_loops() -> None:
    values, mask = ragged_case(0)
    scale = LossScale.of(mask, max_new_tokens=8)
    rows = [[values[b, t].item() for t in range(5) if mask[b, t]] for b in range(6)]
    total = sum(sum(row) for row in rows)
    assert (scale.tokens, scale.sequences, scale.max_new_tokens) == (15.0, 6.0, 8)
    expected = {
        "token_mean": total / 15,
        "sequence_mean": sum(sum(row) / len(row) for row in rows if row) / 6,
        "constant": total / (6 * 8),
    }
    for name, value in expected.items():
        assert LOSS_AGGREGATIONS[name](values, mask, scale).item() == pytest.approx(value)


@pytest.mark.parametrize("name", ["token_mean", "sequence_mean", "constant"])
def test_aggregation_is_invariant_to_micro_batch_split(name: str) -> None:
    values, mask = ragged_case(1)
    aggregate = LOSS_AGGREGATIONS[name]
    scale = LossScale.of(mask, max_new_tokens=5)
    whole = aggregate(values, mask, scale)
    pieces = [slice(0, 2), slice(2, 3), slice(3, 6)]
    split = sum(aggregate(values[rows], mask[rows], scale) for rows in pieces)
    assert float(split) == pytest.approx(whole.item(), rel=1e-12)
    # Each micro-batch dividing by its own counts would not add up to the minibatch's loss.
    naive = sum(aggregate(values[rows], mask[rows], LossScale.of(mask[rows], 5))
                for rows in pieces)
    assert float(naive) != pytest.approx(whole.item(), rel=1e-6)


def test_approx_kl_is_the_masked_mean_of_ratio_minus_one_minus_log_ratio() -> None:
    values, mask = ragged_case(2)
    old = torch.zeros_like(values)
    expected = [math.exp(v) - 1 - v for v, m in zip(values.flatten().tolist(),
                                                      mask.flatten().tolist()) if m]
    assert approx_kl(values, old, mask).item() == pytest.approx(sum(expected) / len(expected))


def test_entropy_matches_categorical_and_is_stable() -> None:
    logits = torch.randn(3, 4, 7, generator=torch.Generator().manual_seed(3))
    expected = torch.distributions.Categorical(logits=logits).entropy()
    assert torch.allclose(entropy_from_logits(logits), expected, atol=1e-6)
    huge = torch.tensor([[1000.0, 1000.0, -1000.0], [0.0, 0.0, float("-inf")]])
    assert entropy_from_logits(huge).tolist() == pytest.approx([math.log(2), math.log(2)])


def test_entropy_as_a_metric_equals_the_differentiable_one_and_the_gradient_stays_finite() -> None:
    """The in-place metric form and the form in the loss agree, a masked (−inf) entry
    included, and the loss's gradient has no nan from 0·(−inf)."""
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(4))
    logits[0, 1, 2] = float("-inf")
    log_probs = torch.log_softmax(logits.requires_grad_(), dim=-1)
    in_loss = entropy_from_log_probs(log_probs)
    with torch.no_grad():
        metric = entropy_from_log_probs(log_probs.detach())
    torch.testing.assert_close(metric, in_loss.detach())
    torch.testing.assert_close(metric, torch.distributions.Categorical(logits=logits).entropy())
    in_loss.sum().backward()
    assert logits.grad is not None and bool(torch.isfinite(logits.grad).all())
