"""The DPO family's losses on hand-worked numbers, and TDPO's sequential KL against a loop."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.algorithms.preference import (
    PREFERENCE_LOSSES,
    PairLogRatios,
    PreferenceOptions,
    sequential_kl,
)

PAIRS = PairLogRatios(chosen=torch.tensor([1.0, -0.5]), rejected=torch.tensor([-1.0, 0.5]))
"""Margins m = 2 and −1."""


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_dpo_is_minus_log_sigmoid_of_beta_times_the_margin() -> None:
    loss = PREFERENCE_LOSSES["sigmoid"](PAIRS, PreferenceOptions(beta=0.5))
    assert loss.tolist() == pytest.approx([-log_sigmoid(1.0), -log_sigmoid(-0.5)])
    offset = PREFERENCE_LOSSES["sigmoid"](PAIRS, PreferenceOptions(beta=0.5, offset=0.25))
    assert offset.tolist() == pytest.approx([-log_sigmoid(0.75), -log_sigmoid(-0.75)])


def test_cdpo_smooths_the_label() -> None:
    loss = PREFERENCE_LOSSES["conservative"](PAIRS, PreferenceOptions(beta=0.5,
                                                                      label_smoothing=0.1))
    expected = [-0.9 * log_sigmoid(z) - 0.1 * log_sigmoid(-z) for z in (1.0, -0.5)]
    assert loss.tolist() == pytest.approx(expected)


def test_ipo_regresses_the_margin_onto_one_over_two_beta() -> None:
    loss = PREFERENCE_LOSSES["ipo"](PAIRS, PreferenceOptions(beta=0.25))  # target 2
    assert loss.tolist() == pytest.approx([0.0, 9.0])


def test_tdpo_subtracts_the_sequential_kl_gap_and_stops_its_gradient_for_tdpo2() -> None:
    chosen_kl = torch.tensor([0.2, 0.0], requires_grad=True)
    rejected_kl = torch.tensor([0.6, 1.0], requires_grad=True)
    pairs = PairLogRatios(PAIRS.chosen, PAIRS.rejected, chosen_kl, rejected_kl)
    tdpo1 = PREFERENCE_LOSSES["tdpo"](pairs, PreferenceOptions(beta=0.5))
    # β·m − β·(KL_l − KL_w) = 1 − 0.2 and −0.5 − 0.5
    assert tdpo1.tolist() == pytest.approx([-log_sigmoid(0.8), -log_sigmoid(-1.0)])
    tdpo2 = PREFERENCE_LOSSES["tdpo"](pairs, PreferenceOptions(
        beta=0.5, tdpo_alpha=0.5, tdpo_stop_gradient=True))
    assert tdpo2.tolist() == pytest.approx([-log_sigmoid(0.9), -log_sigmoid(-0.75)])
    tdpo2.sum().backward()
    assert chosen_kl.grad is None or torch.count_nonzero(chosen_kl.grad) == 0
    assert torch.count_nonzero(rejected_kl.grad) == 2
    with pytest.raises(ValueError, match="sequential KL"):
        PREFERENCE_LOSSES["tdpo"](PAIRS, PreferenceOptions(beta=0.5))


def test_sequential_kl_matches_a_loop() -> None:
    generator = torch.Generator().manual_seed(0)
    reference = torch.randn(3, 4, 5, generator=generator, dtype=torch.float64)
    policy = torch.randn(3, 4, 5, generator=generator, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    expected = []
    for row in range(3):
        total = 0.0
        for t in range(4):
            if not mask[row, t]:
                continue
            p = torch.softmax(reference[row, t], -1).tolist()
            q = torch.softmax(policy[row, t], -1).tolist()
            total += sum(pv * math.log(pv / qv) for pv, qv in zip(p, q))
        expected.append(total)
    assert sequential_kl(reference, policy, mask).tolist() == pytest.approx(expected)
    assert sequential_kl(reference, reference, mask).abs().max() < 1e-6
