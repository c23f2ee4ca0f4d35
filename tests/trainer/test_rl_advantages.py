"""Advantage estimators (GRPO, Dr. GRPO, RLOO, ReMax, NGRPO, GAE), group statistics and the
PPO value loss, against hand-worked values and plain Python loops; and the registry."""

from __future__ import annotations

import statistics

import pytest
import torch

from services.methods.reinforcement import HYPERPARAMETERS
from trainer.algorithms.group import group_mean, group_std
from trainer.algorithms.grpo import grpo_advantages
from trainer.algorithms.ngrpo import ngrpo_advantages
from trainer.algorithms.ppo import clipped_value_loss, gae
from trainer.algorithms.registry import ALGORITHMS, AdvantageOptions, get_algorithm
from trainer.algorithms.remax import remax_advantages
from trainer.algorithms.rloo import rloo_advantages
from trainer.online.batch import RolloutBatch

# Groups of sizes 4, 2, 1 and 2, interleaved.
GROUP = torch.tensor([3, 0, 3, 7, 0, 3, 9, 3, 7])
REWARDS = torch.tensor([0.5, 1.0, -1.0, 2.0, 0.0, 3.0, 4.0, 0.25, 2.0], dtype=torch.float64)


def members(row: int) -> list[float]:
    return [REWARDS[j].item() for j in range(len(GROUP)) if GROUP[j] == GROUP[row]]


def test_group_mean_and_std_match_loops() -> None:
    rows = range(len(GROUP))
    assert group_mean(REWARDS, GROUP).tolist() == pytest.approx(
        [statistics.mean(members(i)) for i in rows])
    assert group_std(REWARDS, GROUP).tolist() == pytest.approx(
        [statistics.stdev(members(i)) if len(members(i)) > 1 else 0.0 for i in rows])
    assert group_std(REWARDS, GROUP, unbiased=False).tolist() == pytest.approx(
        [statistics.pstdev(members(i)) for i in rows])


def test_grpo_and_dr_grpo_on_hand_values() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    group = torch.tensor([0, 1, 0, 1, 2, 2])
    scaled = 0.5 / (0.5**0.5 + 1e-4)  # |r − mean| / (unbiased std + ε) in a {0, 1} pair
    assert grpo_advantages(rewards, group).tolist() == pytest.approx(
        [scaled, -scaled, -scaled, scaled, 0.0, 0.0])
    assert grpo_advantages(rewards, group, scale_rewards=False).tolist() == pytest.approx(
        [0.5, -0.5, -0.5, 0.5, 0.0, 0.0])


def test_grpo_matches_a_loop_on_uneven_groups() -> None:
    expected = []
    for i in range(len(GROUP)):
        rewards = members(i)
        std = statistics.stdev(rewards) if len(rewards) > 1 else 0.0
        expected.append((REWARDS[i].item() - statistics.mean(rewards)) / (std + 1e-4))
    assert grpo_advantages(REWARDS, GROUP).tolist() == pytest.approx(expected)


def test_rloo_baselines_each_sample_with_the_others() -> None:
    assert rloo_advantages(torch.tensor([1.0, 2.0, 6.0]), torch.zeros(3, dtype=torch.long)
                           ).tolist() == pytest.approx([1 - 4, 2 - 3.5, 6 - 1.5])
    expected = []
    for i in range(len(GROUP)):
        others = members(i)
        others.remove(REWARDS[i].item())
        expected.append(REWARDS[i].item() - statistics.mean(others) if others else 0.0)
    assert rloo_advantages(REWARDS, GROUP).tolist() == pytest.approx(expected)


def test_remax_subtracts_the_greedy_reward() -> None:
    advantages = remax_advantages(torch.tensor([1.0, 0.0, 0.5]), torch.tensor([0.5, 0.5, 0.0]))
    assert advantages.tolist() == pytest.approx([0.5, -0.5, 0.5])


def test_ngrpo_pushes_down_an_all_wrong_group() -> None:
    advantages = ngrpo_advantages(torch.zeros(8), torch.zeros(8, dtype=torch.long), r_max=1.0)
    # μ′ = 1/9, σ′ = 1/3, so (0 − 1/9) / (1/3) = −1/3.
    assert advantages.tolist() == pytest.approx([-1 / 3] * 8, abs=1e-5)
    all_right = ngrpo_advantages(torch.ones(4), torch.zeros(4, dtype=torch.long))
    assert all_right.tolist() == pytest.approx([0.0] * 4)


def test_ngrpo_matches_a_loop_with_the_virtual_sample() -> None:
    expected = []
    for i in range(len(GROUP)):
        augmented = members(i) + [4.0]
        mean, std = statistics.mean(augmented), statistics.stdev(augmented)
        expected.append((REWARDS[i].item() - mean) / (std + 1e-6))
    assert ngrpo_advantages(REWARDS, GROUP, r_max=4.0).tolist() == pytest.approx(expected)


def loop_gae(rewards: list[float], values: list[float], length: int, gamma: float,
             lam: float) -> tuple[list[float], list[float]]:
    advantages = [0.0] * len(values)
    returns = [0.0] * len(values)
    last = 0.0
    for t in reversed(range(length)):
        next_value = values[t + 1] if t + 1 < length else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        last = delta + gamma * lam * last
        advantages[t], returns[t] = last, last + values[t]
    return advantages, returns


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.8), (0.5, 0.0), (1.0, 1.0)])
def test_gae_matches_a_loop_on_ragged_masks(gamma: float, lam: float) -> None:
    generator = torch.Generator().manual_seed(0)
    lengths = [6, 0, 1, 4, 3]
    rewards = torch.randn(5, 6, generator=generator, dtype=torch.float64)  # (B, T)
    values = torch.randn(5, 6, generator=generator, dtype=torch.float64)
    mask = torch.arange(6)[None, :] < torch.tensor(lengths)[:, None]
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    for row, length in enumerate(lengths):
        expected_advantages, expected_returns = loop_gae(
            rewards[row].tolist(), values[row].tolist(), length, gamma, lam)
        assert advantages[row].tolist() == pytest.approx(expected_advantages)
        assert returns[row].tolist() == pytest.approx(expected_returns)


def test_gae_with_a_final_reward_and_no_discount_is_monte_carlo() -> None:
    values = torch.tensor([[0.2, 0.4, 0.6, 9.0]])
    rewards = torch.tensor([[0.0, 0.0, 1.0, 5.0]])  # the padded column must not count
    mask = torch.tensor([[True, True, True, False]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert advantages.tolist()[0] == pytest.approx([0.8, 0.6, 0.4, 0.0])
    assert returns.tolist()[0] == pytest.approx([1.0, 1.0, 1.0, 0.0])


def test_clipped_value_loss_on_hand_values() -> None:
    values = torch.tensor([[1.5, 1.5, 0.9]])
    old_values = torch.tensor([[1.0, 1.0, 1.0]])
    returns = torch.tensor([[2.0, 1.0, 0.0]])
    # 1: clipped V = 1.2 is further from R = 2 → ½·0.8²; 2: the unclipped error is larger;
    # 3: inside the range, the plain error.
    assert clipped_value_loss(values, old_values, returns, clip=0.2).tolist()[0] == \
        pytest.approx([0.32, 0.125, 0.405])
    assert clipped_value_loss(values, old_values, returns, clip=None).tolist()[0] == \
        pytest.approx([0.125, 0.125, 0.405])


def tiny_batch() -> RolloutBatch:
    """Two prompts (0, 1) with two responses each, interleaved; rewards 1, 0, 0, 1."""
    batch, length = 4, 3
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    token_rewards = torch.zeros(batch, length)
    token_rewards[0, 2], token_rewards[3, 2] = 1.0, 1.0
    token_rewards[0, 0] = -0.5  # KL shaping folded into the reward: the return is 0.5
    zeros = torch.zeros(batch, length)
    return RolloutBatch(
        sequences=torch.zeros(batch, 2 + length, dtype=torch.long),
        attention_mask=torch.ones(batch, 2 + length, dtype=torch.long), mask=mask,
        logprobs=zeros, ref_logprobs=zeros, values=torch.full((batch, length), 0.25),
        rewards=torch.tensor([1.0, 0.0, 0.0, 1.0]), token_rewards=token_rewards,
        group=torch.tensor([0, 1, 0, 1]), advantages=zeros, returns=zeros,
        baseline_rewards=torch.tensor([0.25, 0.0, 0.25, 0.0]))


@pytest.mark.parametrize("name, per_row", [
    ("grpo", [0.25 / (0.125**0.5 + 1e-4), -0.5 / (0.5**0.5 + 1e-4),
              -0.25 / (0.125**0.5 + 1e-4), 0.5 / (0.5**0.5 + 1e-4)]),
    ("rloo", [0.5, -1.0, -0.5, 1.0]),
    ("remax", [0.25, 0.0, -0.25, 1.0]),
    # prompt 0: {0.5, 0, 1} → μ′ = 0.5, σ′ = 0.5; prompt 1: {0, 1, 1} → μ′ = 2/3, σ′ = 1/√3.
    ("ngrpo", [0.0, -(2 / 3) * 3**0.5, -1.0, (1 / 3) * 3**0.5]),
])
def test_sequence_estimators_broadcast_onto_real_tokens(name: str, per_row: list[float]) -> None:
    batch = tiny_batch()
    advantages, returns = ALGORITHMS[name].advantages(batch, AdvantageOptions())
    expected = torch.tensor(per_row)[:, None] * batch.mask
    assert torch.allclose(advantages, expected, atol=1e-5)
    assert advantages[~batch.mask].eq(0).all() and returns.eq(0).all()


def test_ppo_estimator_is_gae_on_the_critic_values() -> None:
    batch = tiny_batch()
    options = AdvantageOptions(gamma=0.9, lam=0.5)
    advantages, returns = get_algorithm("ppo").advantages(batch, options)
    for row in range(batch.size):
        expected_advantages, expected_returns = loop_gae(
            batch.token_rewards[row].tolist(), batch.values[row].tolist(),
            int(batch.mask[row].sum()), 0.9, 0.5)
        assert advantages[row].tolist() == pytest.approx(expected_advantages)
        assert returns[row].tolist() == pytest.approx(expected_returns)


def test_registry_records_what_each_algorithm_needs() -> None:
    assert set(ALGORITHMS) == {"grpo", "rloo", "remax", "ngrpo", "ppo", "rto", "superhf"}
    assert [name for name, a in ALGORITHMS.items() if a.needs_critic] == ["ppo", "rto"]
    assert [name for name, a in ALGORITHMS.items() if a.needs_greedy_baseline] == ["remax"]
    assert [name for name, a in ALGORITHMS.items() if a.needs_dpo_model] == ["rto"]
    # what the job's hyperparameters hold (`services.methods.reinforcement`): which compare a
    # prompt's responses with each other, and the clip ranges
    assert {name for name, h in HYPERPARAMETERS.items() if h.compares_group} == {
        "grpo", "rloo", "ngrpo", "superhf"}
    assert ALGORITHMS["superhf"].rollout_filter == ("best", 1)
    assert HYPERPARAMETERS["ngrpo"]().clip_range() == (0.16, 0.24)
    assert HYPERPARAMETERS["ppo"]().clip_range() == (0.2, 0.2)
    with pytest.raises(ValueError, match="one of .*'grpo'.*got 'dpo'"):
        get_algorithm("dpo")


def test_options_reach_the_estimators() -> None:
    batch = tiny_batch()
    dr_grpo, _ = ALGORITHMS["grpo"].advantages(batch, AdvantageOptions(scale_rewards=False))
    assert dr_grpo[:, 0].tolist() == pytest.approx([0.25, -0.5, -0.25, 0.5])
    ngrpo, _ = ALGORITHMS["ngrpo"].advantages(batch, AdvantageOptions(r_max=0.5))
    # prompt 0 with a virtual 0.5: {0.5, 0, 0.5} → μ′ = 1/3, σ′ = 1/√12.
    assert ngrpo[0, 0].item() == pytest.approx((0.5 - 1 / 3) * 12**0.5, rel=1e-5)


def test_adaptive_kl_controller_follows_ziegler_et_al() -> None:
    from trainer.algorithms.kl_control import KLController

    fixed = KLController(0.1)
    fixed.update(kl=5.0, n_samples=64)
    assert fixed.value == 0.1
    adaptive = KLController(0.1, target=6.0, horizon=100)
    adaptive.update(kl=9.0, n_samples=10)  # e = clip(0.5, ±0.2) = 0.2 → β·(1 + 0.2·0.1)
    assert adaptive.value == pytest.approx(0.1 * 1.02)
    adaptive.update(kl=5.4, n_samples=10)  # e = -0.1 → β·(1 − 0.01)
    assert adaptive.value == pytest.approx(0.1 * 1.02 * 0.99)
