"""PF-PPO policy filtration (Zhang et al. 2024, "Policy Filtration in RLHF to Fine-Tune LLM for
Code Generation").

A reward model is most reliable at the extremes of its scores, so PF-PPO samples N responses per
prompt and trains only on `keep` of them, chosen by reward: the best (BoN), the best half plus
random others (BR), or the best half plus the worst (BW). Ties go to the lower row index.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor


def best(rewards: Tensor, keep: int, generator: torch.Generator) -> Tensor:
    """Positions of the `keep` highest rewards. rewards: (G,) one group. Returns (keep,)."""
    return torch.argsort(-rewards, stable=True)[:keep]


def best_random(rewards: Tensor, keep: int, generator: torch.Generator) -> Tensor:
    """ceil(keep/2) best, then the rest uniformly without replacement from the other rows."""
    n_best = math.ceil(keep / 2)
    order = torch.argsort(-rewards, stable=True)  # (G,)
    others = order[n_best:].sort().values  # by position, so the draw ignores the ranking
    drawn = torch.randperm(others.numel(), generator=generator)[: keep - n_best]
    return torch.cat([order[:n_best], others[drawn.to(others.device)]])


def best_worst(rewards: Tensor, keep: int, generator: torch.Generator) -> Tensor:
    """ceil(keep/2) best and keep − ceil(keep/2) worst among the other rows."""
    n_best = math.ceil(keep / 2)
    order = torch.argsort(-rewards, stable=True)  # (G,)
    others = order[n_best:].sort().values  # (G − n_best,) by position: ties to the lower one
    worst = others[torch.argsort(rewards[others], stable=True)[: keep - n_best]]
    return torch.cat([order[:n_best], worst])


FILTERS: dict[str, Callable[[Tensor, int, torch.Generator], Tensor]] = {
    "best": best,
    "best_random": best_random,
    "best_worst": best_worst,
}


def filter_rollouts(rewards: Tensor, group: Tensor, keep: int,
                    strategy: Literal["best", "best_random", "best_worst"],
                    generator: torch.Generator) -> Tensor:
    """Row indices to train on, `keep` per group, sorted ascending.

    rewards: (B,); group: (B,) long prompt ids (rows of a group need not be adjacent); every
    group must have at least `keep` rows. Groups are visited in ascending id order, so a
    generator seeded the same way draws the same rows. Returns (n_groups · keep,) long.
    """
    choose = FILTERS[strategy]
    kept = []
    for group_id in torch.unique(group):
        rows = torch.nonzero(group == group_id).squeeze(-1)  # (G,) ascending
        if rows.numel() < keep:
            raise ValueError(f"PF-PPO keeps {keep} responses per prompt, but prompt "
                             f"{int(group_id)} has only {rows.numel()}; sample at least {keep}")
        kept.append(rows[choose(rewards[rows], keep, generator)])
    if not kept:
        return torch.zeros(0, dtype=torch.long, device=rewards.device)
    return torch.cat(kept).sort().values
