"""Masked reductions against plain Python loops, and the SFT loss's token-mean invariance."""

from __future__ import annotations

import math

import pytest
import torch

from modeling.logprobs import IGNORE_INDEX, token_nll
from trainer.algorithms.reductions import (
    masked_count,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)
from trainer.algorithms.sft import completion_token_count, sft_loss


@pytest.fixture
def values_and_mask() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(4, 7, generator=generator, dtype=torch.float64)  # (B, T)
    mask = torch.rand(4, 7, generator=generator) > 0.4  # (B, T)
    mask[2] = False  # a row with nothing to count
    return values, mask


def loop_sum(values: torch.Tensor, mask: torch.Tensor) -> list[float]:
    return [
        sum(float(values[b, t]) for t in range(values.shape[1]) if mask[b, t])
        for b in range(values.shape[0])
    ]


def loop_count(mask: torch.Tensor) -> list[int]:
    return [sum(bool(m) for m in row) for row in mask]


def test_masked_sum_and_count_match_loops(values_and_mask) -> None:
    values, mask = values_and_mask
    sums, counts = loop_sum(values, mask), loop_count(mask)
    assert masked_sum(values, mask).item() == pytest.approx(sum(sums))
    assert masked_sum(values, mask, dim=-1).tolist() == pytest.approx(sums)
    assert masked_count(mask).item() == sum(counts)
    assert masked_count(mask, dim=-1).tolist() == counts


def test_masked_mean_matches_loops(values_and_mask) -> None:
    values, mask = values_and_mask
    sums, counts = loop_sum(values, mask), loop_count(mask)
    assert masked_mean(values, mask).item() == pytest.approx(sum(sums) / sum(counts))
    per_row = [s / c if c else 0.0 for s, c in zip(sums, counts)]
    assert masked_mean(values, mask, dim=-1).tolist() == pytest.approx(per_row)


def test_masked_var_and_whiten_match_loops(values_and_mask) -> None:
    values, mask = values_and_mask
    kept = [float(v) for v, m in zip(values.flatten(), mask.flatten()) if m]
    mean = sum(kept) / len(kept)
    variance = sum((v - mean) ** 2 for v in kept) / (len(kept) - 1)
    assert masked_var(values, mask).item() == pytest.approx(variance)
    whitened = masked_whiten(values, mask)
    expected = [(v - mean) / math.sqrt(variance + 1e-8) for v in kept]
    assert whitened[mask].tolist() == pytest.approx(expected)


def test_masked_out_non_finite_values_do_not_leak(values_and_mask) -> None:
    values, mask = values_and_mask
    poisoned = values.masked_fill(~mask, float("nan"))
    assert torch.isfinite(masked_mean(poisoned, mask))
    assert masked_mean(poisoned, mask).item() == pytest.approx(masked_mean(values, mask).item())


def test_masked_mean_of_empty_mask_is_zero() -> None:
    assert masked_mean(torch.ones(2, 3), torch.zeros(2, 3, dtype=torch.bool)).item() == 0.0


def random_sft_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, T, V) and labels (B, T) with prompts and padding of different lengths."""
    generator = torch.Generator().manual_seed(seed)
    batch, length, vocab = 6, 9, 11
    logits = torch.randn(batch, length, vocab, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, vocab, (batch, length), generator=generator)
    for row in range(batch):
        prompt, padding = row % 4 + 1, row % 3
        labels[row, :prompt] = IGNORE_INDEX
        labels[row, length - padding :] = IGNORE_INDEX
    return logits, labels


def test_sft_loss_matches_a_loop_over_tokens() -> None:
    logits, labels = random_sft_batch(seed=1)
    terms = [
        -torch.log_softmax(logits[b, t - 1], dim=-1)[labels[b, t]].item()
        for b in range(labels.shape[0])
        for t in range(1, labels.shape[1])
        if labels[b, t] != IGNORE_INDEX
    ]
    assert completion_token_count(labels) == len(terms)
    assert sft_loss(logits, labels).item() == pytest.approx(sum(terms) / len(terms))


def test_token_mean_loss_is_invariant_to_splitting_the_batch() -> None:
    """OpenRLHF's check: the batch loss is the token-weighted mean of its halves' losses."""
    logits, labels = random_sft_batch(seed=2)
    first, second = slice(0, 2), slice(2, None)
    n_first = completion_token_count(labels[first])
    n_second = completion_token_count(labels[second])
    combined = (
        n_first * sft_loss(logits[first], labels[first])
        + n_second * sft_loss(logits[second], labels[second])
    ) / (n_first + n_second)
    assert sft_loss(logits, labels).item() == pytest.approx(combined.item(), rel=1e-12)
    # Gradient accumulation: halves normalised by the whole batch's count sum to the full loss.
    total = float(n_first + n_second)
    accumulated = sft_loss(logits[first], labels[first], normalizer=total) + sft_loss(
        logits[second], labels[second], normalizer=total
    )
    assert accumulated.item() == pytest.approx(sft_loss(logits, labels).item(), rel=1e-12)


def test_token_nll_is_zero_and_masked_off_on_ignored_positions() -> None:
    logits, labels = random_sft_batch(seed=3)
    nll, mask = token_nll(logits, labels)
    assert nll.shape == mask.shape == (labels.shape[0], labels.shape[1] - 1)
    assert torch.equal(mask, labels[:, 1:] != IGNORE_INDEX)
    assert torch.all(nll[~mask] == 0)
