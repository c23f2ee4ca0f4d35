"""Pure functions that turn model outputs into one scalar: weighted objectives, and the
ensemble aggregations of Coste et al. 2023, "Reward Model Ensembles Help Mitigate
Overoptimization" (https://arxiv.org/abs/2310.02743)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from services.errors import InvalidRequest


def weighted_sum(parts: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """Σ_k w_k · r_k over the objectives; an objective absent from `weights` counts 0."""
    return sum(weights.get(name, 0.0) * value for name, value in parts.items())


def check_weights(weights: Mapping[str, float], objectives: Sequence[str], param: str) -> None:
    unknown = sorted(set(weights) - set(objectives))
    if unknown:
        raise InvalidRequest(f"objective {unknown[0]!r} is not one of this model's objectives "
                             f"{list(objectives)}", param=f"{param}.{unknown[0]}")


def mean(scores: Sequence[float]) -> float:
    return sum(scores) / len(scores)


def population_variance(scores: Sequence[float]) -> float:
    """(1/M) Σ_i (r_i - mean)²: the spread of the members themselves (not an estimate of a
    wider population's, so no Bessel correction)."""
    centre = mean(scores)
    return sum((score - centre) ** 2 for score in scores) / len(scores)


def worst_case(scores: Sequence[float]) -> float:
    """WCO: the most pessimistic member, min_i r_i."""
    return min(scores)


def uncertainty_weighted(scores: Sequence[float], uwo_lambda: float) -> float:
    """UWO: mean_i r_i - λ · Var_i r_i."""
    return mean(scores) - uwo_lambda * population_variance(scores)


Aggregation = Callable[[Sequence[float], float], float]

AGGREGATIONS: dict[str, Aggregation] = {
    "mean": lambda scores, _: mean(scores),
    "min": lambda scores, _: worst_case(scores),
    "uwo": uncertainty_weighted,
}
"""Ensemble aggregation by name: (member scores, uwo_lambda) → scalar."""
