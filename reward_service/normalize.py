"""Running reward normalisation (PPO-max, Zheng et al. 2023, "Secrets of RLHF in Large
Language Models Part I"): scores are scaled by statistics of every score seen so far.

Statistics live in the service process, one Welford accumulator per key (the scorer scopes
keys by project: one project's scores never move another's statistics), and start afresh
when it restarts. Each request first adds its scores to the statistics, then is normalised by them
(so the first request of a key is normalised by its own mean and spread; a lone first score
becomes 0).
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass


@dataclass
class RunningMoments:
    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    """Σ (x - mean)² over the values seen (Welford)."""

    def update(self, values: list[float]) -> None:
        for value in values:
            self.count += 1
            delta = value - self.mean
            self.mean += delta / self.count
            self.m2 += delta * (value - self.mean)

    @property
    def std(self) -> float:
        """Population standard deviation of the values seen."""
        return math.sqrt(self.m2 / self.count) if self.count else 0.0


class RunningNormalizer:
    def __init__(self) -> None:
        self._moments: dict[Hashable, RunningMoments] = {}

    def normalize(self, key: Hashable, scores: list[float], epsilon: float = 1e-8) -> list[float]:
        moments = self._moments.setdefault(key, RunningMoments())
        moments.update(scores)
        return [(score - moments.mean) / (moments.std + epsilon) for score in scores]

    def moments(self, key: Hashable) -> RunningMoments:
        return self._moments.get(key, RunningMoments())


def clip(score: float, bounds: tuple[float, float] | None) -> float:
    return score if bounds is None else min(max(score, bounds[0]), bounds[1])
