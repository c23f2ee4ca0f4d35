"""Reward-model losses and the implicit head's log-probability sums, against numbers worked by
hand and against plain Python loops."""

from __future__ import annotations

import math
import random

import pytest
import torch

from modeling.logprobs import IGNORE_INDEX, response_logps, response_token_counts
from trainer.algorithms.reward import (
    REWARD_LOSSES,
    bradley_terry_loss,
    center_rewards_loss,
    mean_margin,
    pairwise_accuracy,
    per_objective_correlation,
    per_objective_mse,
    regression_loss,
)


def test_bradley_terry_by_hand() -> None:
    chosen, rejected = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])
    # −log σ(1) = log(1 + e^−1) = 0.31326; −log σ(0) = log 2 = 0.69315
    expected = (math.log(1 + math.exp(-1)) + math.log(2)) / 2
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(expected, rel=1e-6)
    # A margin of 1 turns the first pair's difference into 0: both pairs cost log 2.
    assert bradley_terry_loss(chosen, rejected, 1.0).item() == pytest.approx(
        (math.log(2) + math.log(1 + math.e)) / 2, rel=1e-6)


def plain_bradley_terry(chosen: list[float], rejected: list[float], margin: list[float]) -> float:
    total = 0.0
    for c, r, m in zip(chosen, rejected, margin):
        total += -math.log(1.0 / (1.0 + math.exp(-(c - r - m))))
    return total / len(chosen)


def test_bradley_terry_matches_a_python_loop_with_per_pair_margins() -> None:
    rng = random.Random(0)
    chosen = [rng.uniform(-3, 3) for _ in range(17)]
    rejected = [rng.uniform(-3, 3) for _ in range(17)]
    margin = [rng.uniform(0, 1) for _ in range(17)]
    loss = bradley_terry_loss(torch.tensor(chosen, dtype=torch.float64),
                              torch.tensor(rejected, dtype=torch.float64),
                              torch.tensor(margin, dtype=torch.float64))
    assert loss.item() == pytest.approx(plain_bradley_terry(chosen, rejected, margin), rel=1e-12)
    no_margin = bradley_terry_loss(torch.tensor(chosen, dtype=torch.float64),
                                   torch.tensor(rejected, dtype=torch.float64), None)
    assert no_margin.item() == pytest.approx(
        plain_bradley_terry(chosen, rejected, [0.0] * 17), rel=1e-12)


def test_bradley_terry_stays_finite_far_from_the_preference() -> None:
    loss = bradley_terry_loss(torch.tensor([-200.0]), torch.tensor([200.0]))
    assert loss.item() == pytest.approx(400.0)


def test_pair_statistics_by_hand() -> None:
    chosen, rejected = torch.tensor([2.0, 0.0, 1.0, 3.0]), torch.tensor([1.0, 0.5, 1.0, -1.0])
    assert pairwise_accuracy(chosen, rejected).item() == pytest.approx(0.5)  # a tie is wrong
    assert mean_margin(chosen, rejected).item() == pytest.approx((1 - 0.5 + 0 + 4) / 4)
    assert center_rewards_loss(chosen, rejected).item() == pytest.approx((9 + 0.25 + 4 + 4) / 4)


def test_regression_loss_masks_unrated_objectives() -> None:
    pred = torch.tensor([[1.0, 5.0], [2.0, 0.0]])
    target = torch.tensor([[0.0, 99.0], [0.0, 1.0]])
    mask = torch.tensor([[True, False], [True, True]])
    assert regression_loss(pred, target, mask).item() == pytest.approx((1 + 4 + 1) / 3)
    assert per_objective_mse(pred, target, mask).tolist() == pytest.approx([2.5, 1.0])


def plain_pearson(xs: list[float], ys: list[float]) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    vx = sum((x - mx) ** 2 for x in xs)
    vy = sum((y - my) ** 2 for y in ys)
    return cov / math.sqrt(vx * vy)


def test_correlation_matches_a_python_loop_over_the_rated_rows() -> None:
    rng = random.Random(1)
    pred = [[rng.gauss(0, 1) for _ in range(3)] for _ in range(20)]
    target = [[rng.gauss(0, 1) for _ in range(3)] for _ in range(20)]
    mask = [[rng.random() < 0.7 for _ in range(3)] for _ in range(20)]
    corr = per_objective_correlation(torch.tensor(pred, dtype=torch.float64),
                                     torch.tensor(target, dtype=torch.float64), torch.tensor(mask))
    for k in range(3):
        rows = [i for i in range(20) if mask[i][k]]
        expected = plain_pearson([pred[i][k] for i in rows], [target[i][k] for i in rows])
        assert corr[k].item() == pytest.approx(expected, rel=1e-9)


def test_correlation_is_zero_where_undefined() -> None:
    pred = torch.tensor([[1.0, 1.0], [2.0, 1.0]])
    target = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    mask = torch.tensor([[True, True], [False, True]])
    assert per_objective_correlation(pred, target, mask).tolist() == [0.0, 0.0]


def test_the_registry_picks_the_loss_by_data_kind() -> None:
    assert REWARD_LOSSES["preference"] is bradley_terry_loss
    assert REWARD_LOSSES["ratings"] is regression_loss


def plain_response_logps(logits: list[list[list[float]]], labels: list[list[int]]) -> list[float]:
    """Σ_t log softmax(logits[t−1])[labels[t]] over the labelled positions t ≥ 1, row by row."""
    sums = []
    for row_logits, row_labels in zip(logits, labels):
        total = 0.0
        for t in range(1, len(row_labels)):
            if row_labels[t] == IGNORE_INDEX:
                continue
            scores = row_logits[t - 1]
            log_normaliser = math.log(sum(math.exp(s) for s in scores))
            total += scores[row_labels[t]] - log_normaliser
        sums.append(total)
    return sums


def test_response_logps_match_a_python_loop() -> None:
    rng = random.Random(2)
    rows, length, vocab = 5, 9, 7
    logits = [[[rng.gauss(0, 2) for _ in range(vocab)] for _ in range(length)] for _ in range(rows)]
    starts = [1, 4, 8, 9, 0]  # row 3 has no response token; row 0's first token is unscorable
    labels = [[rng.randrange(vocab) if t >= start else IGNORE_INDEX for t in range(length)]
              for start in starts]
    labels[1][length - 2:] = [IGNORE_INDEX] * 2  # right padding
    got = response_logps(torch.tensor(logits, dtype=torch.float64), torch.tensor(labels))
    assert got.shape == (rows,)
    assert got.tolist() == pytest.approx(plain_response_logps(logits, labels), rel=1e-9)
    assert got[3].item() == 0.0
    counts = response_token_counts(torch.tensor(labels)).tolist()
    assert counts == [sum(label != IGNORE_INDEX for label in row[1:]) for row in labels]


def test_response_logps_are_float32_from_half_precision_logits() -> None:
    logits = torch.randn(2, 4, 11, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[IGNORE_INDEX, 3, 4, 5], [IGNORE_INDEX, IGNORE_INDEX, 1, 2]])
    half = response_logps(logits.to(torch.bfloat16), labels)
    assert half.dtype == torch.float32
    assert half.tolist() == pytest.approx(response_logps(logits, labels).tolist(), abs=0.1)
