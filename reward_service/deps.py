"""Dependencies: a route's signature reads like a sentence (`scorer: ScorerDep`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from reward_service.metrics import RewardMetrics
from reward_service.scorer import Scorer
from reward_service.state import RewardState


def get_state(request: Request) -> RewardState:
    return request.app.state.alignd  # type: ignore[no-any-return]


StateDep = Annotated[RewardState, Depends(get_state)]


def get_scorer(state: StateDep) -> Scorer:
    return state.scorer


def get_metrics(state: StateDep) -> RewardMetrics:
    return state.metrics


ScorerDep = Annotated[Scorer, Depends(get_scorer)]
MetricsDep = Annotated[RewardMetrics, Depends(get_metrics)]
