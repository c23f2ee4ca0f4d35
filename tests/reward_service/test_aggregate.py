"""Objective weighting, ensemble aggregation and running normalisation against numbers worked
by hand (and against the statistics module)."""

from __future__ import annotations

import random
import statistics

import pytest

from reward_service.aggregate import (
    AGGREGATIONS,
    check_weights,
    population_variance,
    weighted_sum,
)
from reward_service.normalize import RunningMoments, RunningNormalizer, clip
from services.errors import InvalidRequest


def test_weighted_sum_counts_unnamed_objectives_as_zero() -> None:
    parts = {"helpful": 2.0, "harmless": -1.0, "honest": 5.0}
    assert weighted_sum(parts, {"helpful": 0.5, "harmless": 2.0}) == 2.0 * 0.5 - 1.0 * 2.0


def test_unknown_objective_is_rejected_with_its_path() -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_weights({"helpful": 1.0, "funny": 1.0}, ["helpful", "harmless"], "reward.w")
    assert caught.value.param == "reward.w.funny"


def test_ensemble_aggregations_by_hand() -> None:
    members = [1.0, 2.0, 6.0]  # mean 3, squared deviations 4 + 1 + 9 = 14, variance 14/3
    assert population_variance(members) == pytest.approx(14 / 3)
    assert AGGREGATIONS["mean"](members, 0.0) == pytest.approx(3.0)
    assert AGGREGATIONS["min"](members, 0.0) == 1.0
    assert AGGREGATIONS["uwo"](members, 0.3) == pytest.approx(3.0 - 0.3 * 14 / 3)
    assert AGGREGATIONS["uwo"]([4.0, 4.0], 10.0) == 4.0  # agreement costs nothing


def test_running_moments_match_the_statistics_module_across_updates() -> None:
    rng = random.Random(0)
    moments, seen = RunningMoments(), []
    for _ in range(5):
        batch = [rng.gauss(3, 2) for _ in range(rng.randrange(1, 20))]
        moments.update(batch)
        seen += batch
        assert moments.mean == pytest.approx(statistics.fmean(seen))
        assert moments.std == pytest.approx(statistics.pstdev(seen))


def test_normalizer_updates_then_normalizes_per_key() -> None:
    normalizer = RunningNormalizer()
    assert normalizer.normalize("a", [5.0]) == [0.0]  # a lone first score is its own mean
    second = normalizer.normalize("a", [1.0, 3.0])
    mean, std = statistics.fmean([5.0, 1.0, 3.0]), statistics.pstdev([5.0, 1.0, 3.0])
    assert second == pytest.approx([(1.0 - mean) / std, (3.0 - mean) / std])
    assert normalizer.normalize("b", [1.0, 3.0]) == pytest.approx([-1.0, 1.0])
    assert normalizer.moments("a").count == 3


def test_clip() -> None:
    assert [clip(x, (-1.0, 2.0)) for x in (-3.0, 0.5, 9.0)] == [-1.0, 0.5, 2.0]
    assert clip(7.0, None) == 7.0
