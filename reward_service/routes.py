"""/v1/score, /v1/reward_models and /metrics: HTTP only; the work is in `Scorer`."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response

from reward_service.deps import MetricsDep, ProjectId, ScorerDep, StateDep
from reward_service.model_cache import registered_reward_models
from reward_service.protocol import RewardModelList, RewardModelObject, ScoreRequest, ScoreResponse
from services.web import ERROR_RESPONSES, metrics_access

router = APIRouter(tags=["rewards"], responses=ERROR_RESPONSES)


@router.post("/v1/score", response_model=ScoreResponse)
async def score(request: ScoreRequest, scorer: ScorerDep, project: ProjectId) -> ScoreResponse:
    return await scorer.score(request, project)


@router.get("/v1/reward_models", response_model=RewardModelList)
async def list_reward_models(state: StateDep, project: ProjectId) -> RewardModelList:
    rows = await asyncio.to_thread(registered_reward_models, state.sessions, project)
    return RewardModelList(data=[
        RewardModelObject(id=row.id, kind=row.kind,  # type: ignore[arg-type]
                          created=int(row.created_at.timestamp()),
                          owned_by=row.project_id or "system", base_model=row.base_model,
                          objectives=(row.metadata_ or {}).get("objectives"),
                          head=(row.metadata_ or {}).get("head"))
        for row in rows])


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, state: StateDep, metrics: MetricsDep) -> Response:
    metrics_access(request, state.settings)
    return Response(metrics.render(), media_type=metrics.content_type)
