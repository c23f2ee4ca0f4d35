"""PF-PPO's policy filters on hand cases with groups that are not adjacent."""

from __future__ import annotations

from typing import Literal

import pytest
import torch

from trainer.algorithms.pf_ppo import FILTERS, filter_rollouts

#          row: 0    1    2    3    4    5     6    7
GROUP = torch.tensor([2, 0, 2, 0, 2, 0, 2, 2])
REWARDS = torch.tensor([0.1, 0.3, 0.9, 0.3, 0.5, -0.2, 0.9, 0.2])


Strategy = Literal["best", "best_random", "best_worst"]


def run(strategy: Strategy, keep: int, seed: int = 0, rewards: torch.Tensor = REWARDS,
        group: torch.Tensor = GROUP) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return filter_rollouts(rewards, group, keep, strategy, generator).tolist()


def test_best_keeps_the_top_rewards_of_each_group_with_ties_to_the_lower_row() -> None:
    assert run("best", keep=2) == [1, 2, 3, 6]
    assert run("best", keep=1) == [1, 2]  # 2 ties with 6, 1 with 3


def test_best_worst_keeps_both_extremes() -> None:
    assert run("best_worst", keep=2) == [0, 1, 2, 5]
    assert run("best_worst", keep=3) == [0, 1, 2, 3, 5, 6]
    # All equal: the best is row 0; the worst among the others goes to the lower row, 1.
    flat = torch.zeros(3)
    assert run("best_worst", 2, rewards=flat, group=torch.zeros(3, dtype=torch.long)) == [0, 1]


def test_best_random_draws_the_rest_from_the_generator() -> None:
    picks = set()
    for seed in range(20):
        kept = run("best_random", keep=3, seed=seed)
        assert kept == run("best_random", keep=3, seed=seed)  # deterministic for a seed
        assert {1, 2, 3, 5, 6} <= set(kept) and len(kept) == 6
        (random_pick,) = set(kept) - {1, 2, 3, 5, 6}
        picks.add(random_pick)
    assert picks == {0, 4, 7}  # group 2's non-best rows are all reachable


def test_every_filter_keeps_keep_rows_per_group() -> None:
    strategies: list[Strategy] = ["best", "best_random", "best_worst"]
    assert set(FILTERS) == set(strategies)
    for strategy in strategies:
        kept = torch.tensor(run(strategy, keep=3))
        assert torch.bincount(GROUP[kept]).tolist() == [3, 0, 3]
        assert kept.unique().numel() == 6


def test_a_group_smaller_than_keep_is_refused() -> None:
    with pytest.raises(ValueError, match="has only 3"):
        run("best", keep=4)
